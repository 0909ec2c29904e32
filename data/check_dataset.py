#!/usr/bin/env python3
"""Validate TuneLab's bundled science-tutor data set.

Run from the repository root (or anywhere):  python3 data/check_dataset.py

Plain Python 3, no third-party packages. Prints a summary and exits 1 if
any problem is found, 0 otherwise. It checks:
  * all four files are valid UTF-8 JSON / JSONL;
  * alpaca records have exactly the keys instruction, input (""), output;
  * the .messages.jsonl files hold the same records, in the same order, as
    user + assistant turns (no system message);
  * every output follows the house style exactly: the four headings in
    order, one paragraph each, separated by blank lines;
  * sentence counts (definition 1, how it works 2-3, example 1-2);
  * 70-120 words per output;
  * 3-4 comma-separated key terms, each of which appears in the answer text;
  * counts (>= 220 train, >= 45 held-out) and a rough domain balance;
  * no instruction, concept or near-duplicate shared by train and held-out,
    and "Explain photosynthesis." is held out (and not taught in train).
"""
import json
import os
import re
import sys
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = {
    "train": ("science_tutor_train.alpaca.json", "science_tutor_train.messages.jsonl"),
    "heldout": ("science_tutor_heldout.alpaca.json", "science_tutor_heldout.messages.jsonl"),
}
MIN_COUNT = {"train": 220, "heldout": 45}
DOMAINS = ("biology", "chemistry", "physics", "earth science", "technology")
MIN_WORDS, MAX_WORDS = 70, 120
HEADINGS = ("Definition", "How it works", "Everyday example", "Key terms")
SENTENCES = {"Definition": (1, 1), "How it works": (2, 3), "Everyday example": (1, 2)}
NEAR_DUP_QUESTION = 0.5   # Jaccard of question content words, train vs held-out
NEAR_DUP_ANSWER = 0.45    # Jaccard of answer content words, train vs held-out
MUST_HOLD_OUT = "Explain photosynthesis."

OUTPUT_RE = re.compile(
    r"\A\*\*Definition:\*\* (?P<d>[^\n]+)\n\n"
    r"\*\*How it works:\*\* (?P<h>[^\n]+)\n\n"
    r"\*\*Everyday example:\*\* (?P<e>[^\n]+)\n\n"
    r"\*\*Key terms:\*\* (?P<k>[^\n]+)\Z"
)
STOP = set("""a an the is are was were be been of to in on at by for and or but with
without as from into onto that this these those it its it's do does did how why what
which who when where can could you your we our us me my i explain tell about work works
happen happens there their they them than so such up out make makes made""".split())

# --- BEGIN CATALOGUE (generated; instruction -> domain, concept) ---
CATALOGUE = {
    'train': {
        'What is cellular respiration?': ('biology', 'cellular-respiration'),
        'What is DNA?': ('biology', 'dna'),
        'What is a gene?': ('biology', 'gene'),
        'Explain mitosis.': ('biology', 'mitosis'),
        'How does natural selection work?': ('biology', 'natural-selection'),
        'What is an adaptation in biology?': ('biology', 'adaptation'),
        'How does the immune system protect us?': ('biology', 'immune-system'),
        'Can you explain how vaccines work?': ('biology', 'vaccines'),
        'What are antibiotics?': ('biology', 'antibiotics'),
        'What is a virus?': ('biology', 'virus'),
        'Explain what bacteria are.': ('biology', 'bacteria'),
        'What are enzymes?': ('biology', 'enzymes'),
        'How does the heart pump blood?': ('biology', 'heart'),
        'What do red blood cells do?': ('biology', 'red-blood-cells'),
        'How do our lungs work?': ('biology', 'lungs'),
        'Explain digestion.': ('biology', 'digestion'),
        'What is a neuron?': ('biology', 'neurons'),
        'Why do we have reflexes?': ('biology', 'reflexes'),
        'What are hormones?': ('biology', 'hormones'),
        'How does insulin control blood sugar?': ('biology', 'insulin'),
        'What is osmosis?': ('biology', 'osmosis'),
        'Explain diffusion.': ('biology', 'diffusion'),
        'What does the cell membrane do?': ('biology', 'cell-membrane'),
        'What are mitochondria?': ('biology', 'mitochondria'),
        'What is the nucleus of a cell?': ('biology', 'nucleus'),
        'What is an ecosystem?': ('biology', 'ecosystem'),
        'Explain a food chain.': ('biology', 'food-chain'),
        'What happens when a seed germinates?': ('biology', 'germination'),
        'What is transpiration in plants?': ('biology', 'transpiration'),
        'Explain the nitrogen cycle.': ('biology', 'nitrogen-cycle'),
        'What is symbiosis?': ('biology', 'symbiosis'),
        'How does camouflage help animals survive?': ('biology', 'camouflage'),
        'Why do some animals hibernate?': ('biology', 'hibernation'),
        'Why do birds migrate?': ('biology', 'migration'),
        'Why do we need a skeleton?': ('biology', 'skeleton'),
        'How do muscles make us move?': ('biology', 'muscles'),
        'How does the sense of taste work?': ('biology', 'taste'),
        'How do our eyes see?': ('biology', 'eyes'),
        'Why do we need sleep?': ('biology', 'sleep'),
        'What causes a fever?': ('biology', 'fever'),
        'How does blood clot?': ('biology', 'blood-clotting'),
        'Can you explain homeostasis?': ('biology', 'homeostasis'),
        'What are proteins?': ('biology', 'proteins'),
        'What are carbohydrates?': ('biology', 'carbohydrates'),
        'What are fungi?': ('biology', 'fungi'),
        'Why is biodiversity important?': ('biology', 'biodiversity'),
        'How does yeast make bread rise?': ('biology', 'yeast-bread'),
        'What is an atom?': ('chemistry', 'atom'),
        'What is a chemical element?': ('chemistry', 'element'),
        'How is the periodic table organised?': ('chemistry', 'periodic-table'),
        'What is a molecule?': ('chemistry', 'molecule'),
        'What is the difference between a compound and a mixture?': ('chemistry', 'compound-vs-mixture'),
        'What is an ionic bond?': ('chemistry', 'ionic-bond'),
        'What is a covalent bond?': ('chemistry', 'covalent-bond'),
        'What is an acid?': ('chemistry', 'acid'),
        'What happens in a neutralisation reaction?': ('chemistry', 'neutralisation'),
        'What is a chemical reaction?': ('chemistry', 'chemical-reaction'),
        'What is combustion?': ('chemistry', 'combustion'),
        'Why does iron rust?': ('chemistry', 'rusting'),
        'What is a catalyst?': ('chemistry', 'catalyst'),
        'What affects the rate of a chemical reaction?': ('chemistry', 'reaction-rate'),
        'What are the states of matter?': ('chemistry', 'states-of-matter'),
        'Why does ice melt?': ('chemistry', 'melting'),
        'How does evaporation work?': ('chemistry', 'evaporation'),
        'What happens when water boils?': ('chemistry', 'boiling'),
        'What is condensation?': ('chemistry', 'condensation'),
        'What happens when something dissolves?': ('chemistry', 'dissolving'),
        'What is an ion?': ('chemistry', 'ion'),
        'Explain how electrons are arranged in an atom.': ('chemistry', 'electron-shells'),
        'How do crystals form?': ('chemistry', 'crystals'),
        'Why is water such a good solvent?': ('chemistry', 'water-solvent'),
        'What are hydrogen bonds?': ('chemistry', 'hydrogen-bonds'),
        'What is surface tension?': ('chemistry', 'surface-tension'),
        'How does soap clean things?': ('chemistry', 'soap'),
        'What happens when you mix baking soda and vinegar?': ('chemistry', 'baking-soda-vinegar'),
        'How does distillation work?': ('chemistry', 'distillation'),
        'What is filtration?': ('chemistry', 'filtration'),
        'What is a mole in chemistry?': ('chemistry', 'mole'),
        'What is the law of conservation of mass?': ('chemistry', 'conservation-of-mass'),
        'What makes a metal a metal?': ('chemistry', 'metals'),
        'What is organic chemistry?': ('chemistry', 'organic-chemistry'),
        'What are hydrocarbons?': ('chemistry', 'hydrocarbons'),
        'Can you explain electrolysis?': ('chemistry', 'electrolysis'),
        'What does concentration mean in chemistry?': ('chemistry', 'concentration'),
        'What is a precipitation reaction?': ('chemistry', 'precipitation-reaction'),
        'What does a chemical formula tell you?': ('chemistry', 'chemical-formula'),
        'What is activation energy?': ('chemistry', 'activation-energy'),
        'Why does an egg turn solid when you cook it?': ('chemistry', 'cooking-egg'),
        'Why does cutting onions make you cry?': ('chemistry', 'onions'),
        'What are allotropes?': ('chemistry', 'allotropes'),
        'What is a salt in chemistry?': ('chemistry', 'salts'),
        'How does bleach work?': ('chemistry', 'bleach'),
        'Why does salt melt ice on roads?': ('chemistry', 'road-salt'),
        'What is gravity?': ('physics', 'gravity'),
        "Explain Newton's first law of motion.": ('physics', 'newton-first-law'),
        "What does Newton's second law say?": ('physics', 'newton-second-law'),
        "What is Newton's third law?": ('physics', 'newton-third-law'),
        'What is friction?': ('physics', 'friction'),
        'What is momentum?': ('physics', 'momentum'),
        'What is kinetic energy?': ('physics', 'kinetic-energy'),
        'What is potential energy?': ('physics', 'potential-energy'),
        'What is the law of conservation of energy?': ('physics', 'conservation-of-energy'),
        'What is power in physics?': ('physics', 'power'),
        'What is work in physics?': ('physics', 'work'),
        'Explain how a lever works.': ('physics', 'lever'),
        'How does a ramp help you raise heavy loads?': ('physics', 'ramp'),
        'What is pressure?': ('physics', 'pressure'),
        'Why do some things float?': ('physics', 'buoyancy'),
        'What is density?': ('physics', 'density'),
        'What is sound?': ('physics', 'sound'),
        'What is an echo?': ('physics', 'echo'),
        'How do mirrors reflect light?': ('physics', 'reflection'),
        'What is refraction?': ('physics', 'refraction'),
        'Why do we see rainbows?': ('physics', 'rainbows'),
        'What gives an object its colour?': ('physics', 'colour'),
        'What is the electromagnetic spectrum?': ('physics', 'em-spectrum'),
        'What is electric current?': ('physics', 'electric-current'),
        'What is voltage?': ('physics', 'voltage'),
        'What is electrical resistance?': ('physics', 'resistance'),
        'What is the difference between series and parallel circuits?': ('physics', 'series-parallel'),
        'How do magnets work?': ('physics', 'magnets'),
        'How does a generator make electricity?': ('physics', 'generator'),
        'How does heat travel by conduction?': ('physics', 'conduction'),
        'What is convection?': ('physics', 'convection'),
        'How does heat travel by radiation?': ('physics', 'thermal-radiation'),
        'What is the difference between heat and temperature?': ('physics', 'heat-vs-temperature'),
        'What is centripetal force?': ('physics', 'centripetal-force'),
        'What is the difference between speed and velocity?': ('physics', 'speed-velocity'),
        'What is acceleration?': ('physics', 'acceleration'),
        'What is the difference between mass and weight?': ('physics', 'mass-vs-weight'),
        'What is radioactivity?': ('physics', 'radioactivity'),
        'What is nuclear fission?': ('physics', 'fission'),
        'What is nuclear fusion?': ('physics', 'fusion'),
        'What is the difference between transverse and longitudinal waves?': ('physics', 'wave-types'),
        'How are frequency and pitch related?': ('physics', 'frequency-pitch'),
        'How are shadows formed?': ('physics', 'shadows'),
        'How do satellites stay in orbit?': ('physics', 'orbits'),
        'What is a vacuum?': ('physics', 'vacuum'),
        'What is absolute zero?': ('physics', 'absolute-zero'),
    },
    'heldout': {
        'Explain photosynthesis.': ('biology', 'photosynthesis'),
        'What is meiosis?': ('biology', 'meiosis'),
        'What do the kidneys do?': ('biology', 'kidneys'),
        'What are decomposers?': ('biology', 'decomposers'),
        'How does pollination work?': ('biology', 'pollination'),
        'What is metamorphosis?': ('biology', 'metamorphosis'),
        'How do our ears hear sounds?': ('biology', 'hearing'),
        'What are allergies?': ('biology', 'allergies'),
        'Explain dominant and recessive alleles.': ('biology', 'dominant-recessive'),
        'What are stem cells?': ('biology', 'stem-cells'),
        'What is the pH scale?': ('chemistry', 'ph-scale'),
        'What is the difference between exothermic and endothermic reactions?': ('chemistry', 'exo-endothermic'),
        'What is an isotope?': ('chemistry', 'isotopes'),
        'What are polymers?': ('chemistry', 'polymers'),
        'How does chromatography separate substances?': ('chemistry', 'chromatography'),
        'What are the noble gases?': ('chemistry', 'noble-gases'),
        'What is an alloy?': ('chemistry', 'alloys'),
        'What is sublimation?': ('chemistry', 'sublimation'),
        'What is an emulsion?': ('chemistry', 'emulsions'),
        'Why do fireworks have different colours?': ('chemistry', 'fireworks'),
        'How do pulleys make lifting easier?': ('physics', 'pulleys'),
        'What is the Doppler effect?': ('physics', 'doppler'),
        'How do lenses work?': ('physics', 'lenses'),
        'What is static electricity?': ('physics', 'static-electricity'),
        'How does an electromagnet work?': ('physics', 'electromagnet'),
        'What is thermal expansion?': ('physics', 'thermal-expansion'),
        'What is terminal velocity?': ('physics', 'terminal-velocity'),
        'How does a pendulum work?': ('physics', 'pendulum'),
        'What is half-life?': ('physics', 'half-life'),
        "What is Hooke's law?": ('physics', 'hookes-law'),
    },
}
# --- END CATALOGUE ---

problems = []


def problem(msg):
    problems.append(msg)


def content_words(text):
    words = re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", text.lower())
    out = set()
    for w in words:
        if w in STOP or len(w) < 3:
            continue
        if len(w) > 4 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.add(w)
    return out


def jaccard(a, b):
    return len(a & b) / len(a | b) if a | b else 0.0


def count_sentences(text):
    # A sentence ends with . ! or ? followed by a space and a capital/digit/quote, or the end.
    parts = re.split(r"(?<=[.!?])[\"']?\s+(?=[A-Z0-9\"'])", text.strip())
    return len([p for p in parts if p.strip()])


def load(split):
    alpaca_name, msgs_name = FILES[split]
    path = os.path.join(HERE, alpaca_name)
    try:
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
    except (OSError, ValueError) as exc:
        problem(f"{alpaca_name}: cannot read JSON ({exc})")
        return []
    if not isinstance(records, list):
        problem(f"{alpaca_name}: top level is not a JSON array")
        return []
    good = []
    for i, r in enumerate(records):
        where = f"{alpaca_name}[{i}]"
        if not isinstance(r, dict) or set(r) != {"instruction", "input", "output"}:
            problem(f"{where}: keys must be exactly instruction, input, output")
            continue
        if not all(isinstance(r[k], str) for k in r):
            problem(f"{where}: all values must be strings")
            continue
        if r["input"] != "":
            problem(f"{where}: input must be the empty string")
        if not r["instruction"].strip():
            problem(f"{where}: empty instruction")
        good.append(r)

    path = os.path.join(HERE, msgs_name)
    try:
        with open(path, encoding="utf-8") as f:
            lines = [ln for ln in f.read().split("\n") if ln.strip()]
    except OSError as exc:
        problem(f"{msgs_name}: cannot read ({exc})")
        return good
    if len(lines) != len(records):
        problem(f"{msgs_name}: {len(lines)} lines but {alpaca_name} has {len(records)} records")
    for i, (line, r) in enumerate(zip(lines, records)):
        where = f"{msgs_name}:{i + 1}"
        try:
            obj = json.loads(line)
        except ValueError as exc:
            problem(f"{where}: invalid JSON ({exc})")
            continue
        msgs = obj.get("messages") if isinstance(obj, dict) else None
        if set(obj) != {"messages"} or not isinstance(msgs, list) or len(msgs) != 2:
            problem(f"{where}: expected {{\"messages\": [user, assistant]}}")
            continue
        if [m.get("role") for m in msgs] != ["user", "assistant"] or any(set(m) != {"role", "content"} for m in msgs):
            problem(f"{where}: roles must be exactly user then assistant (no system message)")
            continue
        if isinstance(r, dict) and (msgs[0]["content"] != r.get("instruction") or msgs[1]["content"] != r.get("output")):
            problem(f"{where}: differs from {alpaca_name}[{i}]")
    return good


def check_output(split, r):
    q = r["instruction"]
    where = f"{split}: {q!r}"
    m = OUTPUT_RE.match(r["output"])
    if not m:
        problem(f"{where}: output does not follow the house style (4 headings, in order, blank-line separated)")
        return
    for name, key in zip(HEADINGS, "dhek"):
        if m.group(key) != m.group(key).strip():
            problem(f"{where}: stray whitespace in {name}")
    for name, key in (("Definition", "d"), ("How it works", "h"), ("Everyday example", "e")):
        n = count_sentences(m.group(key))
        lo, hi = SENTENCES[name]
        if not lo <= n <= hi:
            problem(f"{where}: {name} has {n} sentences (want {lo}-{hi})")
        if not m.group(key).rstrip("\"'").endswith((".", "!", "?")):
            problem(f"{where}: {name} does not end with a full stop")
    words = len(r["output"].split())
    if not MIN_WORDS <= words <= MAX_WORDS:
        problem(f"{where}: {words} words (want {MIN_WORDS}-{MAX_WORDS})")
    terms = [t.strip() for t in m.group("k").split(",")]
    if m.group("k").endswith(".") or any(not t for t in terms):
        problem(f"{where}: key terms must be a plain comma-separated list")
    if not 3 <= len(terms) <= 4:
        problem(f"{where}: {len(terms)} key terms (want 3-4)")
    if len({t.lower() for t in terms}) != len(terms):
        problem(f"{where}: repeated key term")
    body = " ".join(m.group(k) for k in "dhe").lower()
    for t in terms:
        if t and t.lower() not in body:
            problem(f"{where}: key term {t!r} does not appear in the answer")
    return words


def main():
    data = {split: load(split) for split in FILES}
    stats = {}
    for split, records in data.items():
        words = [check_output(split, r) for r in records]
        words = [w for w in words if w]
        stats[split] = words
        if len(records) < MIN_COUNT[split]:
            problem(f"{split}: only {len(records)} records (want >= {MIN_COUNT[split]})")
        dup = [q for q, n in Counter(r["instruction"] for r in records).items() if n > 1]
        for q in dup:
            problem(f"{split}: duplicate instruction {q!r}")

    # catalogue: every record labelled, labels consistent with the split
    domains = {split: Counter() for split in FILES}
    concepts = {split: {} for split in FILES}
    for split, records in data.items():
        listed = CATALOGUE.get(split, {})
        seen = set()
        for r in records:
            q = r["instruction"]
            if q not in listed:
                problem(f"{split}: {q!r} is not in the catalogue in check_dataset.py")
                continue
            seen.add(q)
            domain, concept = listed[q]
            if domain not in DOMAINS:
                problem(f"{split}: {q!r} has unknown domain {domain!r}")
            domains[split][domain] += 1
            if concept in concepts[split]:
                problem(f"{split}: concept {concept!r} appears twice")
            concepts[split][concept] = q
        for q in set(listed) - seen:
            problem(f"{split}: catalogue lists {q!r} but the data file does not contain it")
        n = len(records)
        for d in DOMAINS:
            if n and domains[split][d] < 0.15 * n:
                problem(f"{split}: domain {d!r} has only {domains[split][d]} of {n} records (unbalanced)")

    # train / held-out separation
    train, held = data["train"], data["heldout"]
    for q in {r["instruction"] for r in train} & {r["instruction"] for r in held}:
        problem(f"instruction in both splits: {q!r}")
    for c in set(concepts["train"]) & set(concepts["heldout"]):
        problem(f"concept {c!r} in both splits: {concepts['train'][c]!r} / {concepts['heldout'][c]!r}")
    if MUST_HOLD_OUT not in {r["instruction"] for r in held}:
        problem(f"{MUST_HOLD_OUT!r} must be in the held-out set")
    for r in train:
        if "photosynth" in r["instruction"].lower():
            problem(f"train teaches photosynthesis: {r['instruction']!r}")
    max_q = max_a = (0.0, "", "")
    for t in train:
        tq, ta = content_words(t["instruction"]), content_words(t["output"])
        for h in held:
            jq = jaccard(tq, content_words(h["instruction"]))
            ja = jaccard(ta, content_words(h["output"]))
            if jq > max_q[0]:
                max_q = (jq, t["instruction"], h["instruction"])
            if ja > max_a[0]:
                max_a = (ja, t["instruction"], h["instruction"])
            if jq >= NEAR_DUP_QUESTION:
                problem(f"near-duplicate questions ({jq:.2f}): train {t['instruction']!r} / held-out {h['instruction']!r}")
            if ja >= NEAR_DUP_ANSWER:
                problem(f"near-duplicate answers ({ja:.2f}): train {t['instruction']!r} / held-out {h['instruction']!r}")

    # report
    for split in FILES:
        w = stats[split]
        print(f"{split}: {len(data[split])} records; words min/mean/max = "
              f"{min(w, default=0)}/{(sum(w) / len(w)) if w else 0:.1f}/{max(w, default=0)}")
        print("  " + ", ".join(f"{d}: {domains[split][d]}" for d in DOMAINS))
    print(f"closest train/held-out questions: {max_q[0]:.2f} ({max_q[1]!r} / {max_q[2]!r})")
    print(f"closest train/held-out answers:   {max_a[0]:.2f} ({max_a[1]!r} / {max_a[2]!r})")
    if problems:
        print(f"\nFAILED: {len(problems)} problem(s)")
        for p in problems:
            print("  - " + p)
        return 1
    print("\nOK: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
