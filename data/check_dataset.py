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
        'Explain what hormones do.': ('biology', 'hormones'),
        'How does insulin control blood sugar?': ('biology', 'insulin'),
        'Can you explain osmosis?': ('biology', 'osmosis'),
        'Explain diffusion.': ('biology', 'diffusion'),
        'What does the cell membrane do?': ('biology', 'cell-membrane'),
        'What are mitochondria?': ('biology', 'mitochondria'),
        'What is the nucleus of a cell?': ('biology', 'nucleus'),
        'What is an ecosystem?': ('biology', 'ecosystem'),
        'Explain a food chain.': ('biology', 'food-chain'),
        'What happens when a seed germinates?': ('biology', 'germination'),
        'What is transpiration in plants?': ('biology', 'transpiration'),
        'Explain the nitrogen cycle.': ('biology', 'nitrogen-cycle'),
        'Explain symbiosis.': ('biology', 'symbiosis'),
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
        'Explain what an atom is.': ('chemistry', 'atom'),
        'What is a chemical element?': ('chemistry', 'element'),
        'How is the periodic table organised?': ('chemistry', 'periodic-table'),
        'What is a molecule?': ('chemistry', 'molecule'),
        'What is the difference between a compound and a mixture?': ('chemistry', 'compound-vs-mixture'),
        'What is an ionic bond?': ('chemistry', 'ionic-bond'),
        'Explain covalent bonding.': ('chemistry', 'covalent-bond'),
        'What is an acid?': ('chemistry', 'acid'),
        'What happens in a neutralisation reaction?': ('chemistry', 'neutralisation'),
        'What is a chemical reaction?': ('chemistry', 'chemical-reaction'),
        'Explain combustion.': ('chemistry', 'combustion'),
        'Why does iron rust?': ('chemistry', 'rusting'),
        'Can you explain what a catalyst does?': ('chemistry', 'catalyst'),
        'What affects the rate of a chemical reaction?': ('chemistry', 'reaction-rate'),
        'What are the states of matter?': ('chemistry', 'states-of-matter'),
        'Why does ice melt?': ('chemistry', 'melting'),
        'How does evaporation work?': ('chemistry', 'evaporation'),
        'What happens when water boils?': ('chemistry', 'boiling'),
        'Why does condensation form on cold surfaces?': ('chemistry', 'condensation'),
        'What happens when something dissolves?': ('chemistry', 'dissolving'),
        'What is an ion?': ('chemistry', 'ion'),
        'Explain how electrons are arranged in an atom.': ('chemistry', 'electron-shells'),
        'How do crystals form?': ('chemistry', 'crystals'),
        'Why is water such a good solvent?': ('chemistry', 'water-solvent'),
        'What are hydrogen bonds?': ('chemistry', 'hydrogen-bonds'),
        'Why does water have surface tension?': ('chemistry', 'surface-tension'),
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
        'Explain why the sky is blue.': ('earth science', 'sky-blue'),
        'Explain plate tectonics.': ('earth science', 'plate-tectonics'),
        'What causes earthquakes?': ('earth science', 'earthquakes'),
        'How do volcanoes form?': ('earth science', 'volcanoes'),
        'Explain the rock cycle.': ('earth science', 'rock-cycle'),
        'How are igneous rocks formed?': ('earth science', 'igneous-rocks'),
        'What are sedimentary rocks?': ('earth science', 'sedimentary-rocks'),
        'How do metamorphic rocks form?': ('earth science', 'metamorphic-rocks'),
        'How do fossils form?': ('earth science', 'fossils'),
        'Explain erosion.': ('earth science', 'erosion'),
        'Can you explain weathering?': ('earth science', 'weathering'),
        'Explain the water cycle.': ('earth science', 'water-cycle'),
        'How do clouds form?': ('earth science', 'clouds'),
        'Why does it rain?': ('earth science', 'rain'),
        'How does snow form?': ('earth science', 'snow'),
        'What causes lightning?': ('earth science', 'lightning'),
        'What causes thunder?': ('earth science', 'thunder'),
        'What causes wind?': ('earth science', 'wind'),
        'How do hurricanes form?': ('earth science', 'hurricanes'),
        'What is a tornado?': ('earth science', 'tornadoes'),
        'Why do we have seasons?': ('earth science', 'seasons'),
        'Why do we have day and night?': ('earth science', 'day-night'),
        'Why does the Moon have phases?': ('earth science', 'moon-phases'),
        'Explain the greenhouse effect.': ('earth science', 'greenhouse-effect'),
        'Can you explain climate change?': ('earth science', 'climate-change'),
        'Can you explain the ozone layer?': ('earth science', 'ozone-layer'),
        'What causes ocean currents?': ('earth science', 'ocean-currents'),
        'What is groundwater?': ('earth science', 'groundwater'),
        'How is soil formed?': ('earth science', 'soil'),
        'What are the layers of the atmosphere?': ('earth science', 'atmosphere-layers'),
        'What is a weather front?': ('earth science', 'weather-fronts'),
        'Explain the carbon cycle.': ('earth science', 'carbon-cycle'),
        'How were fossil fuels formed?': ('earth science', 'fossil-fuels'),
        'What is inside the Earth?': ('earth science', 'earth-layers'),
        'Why does Earth have a magnetic field?': ('earth science', 'magnetic-field'),
        'What is a shooting star?': ('earth science', 'meteors'),
        'What is the solar system?': ('earth science', 'solar-system'),
        'What is a galaxy?': ('earth science', 'galaxy'),
        'Explain black holes.': ('earth science', 'black-hole'),
        'What is the Big Bang theory?': ('earth science', 'big-bang'),
        'How do limestone caves form?': ('earth science', 'caves'),
        'What makes a place a desert?': ('earth science', 'deserts'),
        'Why does fog form?': ('earth science', 'fog'),
        'Why does acid rain happen?': ('earth science', 'acid-rain'),
        'How do mountains form?': ('earth science', 'mountains'),
        'Explain humidity.': ('earth science', 'humidity'),
        'Explain gravity.': ('physics', 'gravity'),
        "Explain Newton's first law of motion.": ('physics', 'newton-first-law'),
        "What does Newton's second law say?": ('physics', 'newton-second-law'),
        "What is Newton's third law?": ('physics', 'newton-third-law'),
        'Can you explain friction?': ('physics', 'friction'),
        'Explain momentum.': ('physics', 'momentum'),
        'What is kinetic energy?': ('physics', 'kinetic-energy'),
        'What is potential energy?': ('physics', 'potential-energy'),
        'What is the law of conservation of energy?': ('physics', 'conservation-of-energy'),
        'What is power in physics?': ('physics', 'power'),
        'What is work in physics?': ('physics', 'work'),
        'Explain how a lever works.': ('physics', 'lever'),
        'How does a ramp help you raise heavy loads?': ('physics', 'ramp'),
        'Explain pressure in physics.': ('physics', 'pressure'),
        'Why do some things float?': ('physics', 'buoyancy'),
        'What is density?': ('physics', 'density'),
        'Explain how sound travels.': ('physics', 'sound'),
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
        'Explain convection.': ('physics', 'convection'),
        'How does heat travel by radiation?': ('physics', 'thermal-radiation'),
        'What is the difference between heat and temperature?': ('physics', 'heat-vs-temperature'),
        'What is centripetal force?': ('physics', 'centripetal-force'),
        'What is the difference between speed and velocity?': ('physics', 'speed-velocity'),
        'What is acceleration?': ('physics', 'acceleration'),
        'What is the difference between mass and weight?': ('physics', 'mass-vs-weight'),
        'Explain radioactivity.': ('physics', 'radioactivity'),
        'What is nuclear fission?': ('physics', 'fission'),
        'Can you explain nuclear fusion?': ('physics', 'fusion'),
        'What is the difference between transverse and longitudinal waves?': ('physics', 'wave-types'),
        'How are frequency and pitch related?': ('physics', 'frequency-pitch'),
        'How are shadows formed?': ('physics', 'shadows'),
        'How do satellites stay in orbit?': ('physics', 'orbits'),
        'What is a vacuum?': ('physics', 'vacuum'),
        'What is absolute zero?': ('physics', 'absolute-zero'),
        'How does a refrigerator keep food cold?': ('technology', 'refrigerator'),
        'Explain how a touchscreen works.': ('technology', 'touchscreen'),
        'How does Wi-Fi work?': ('technology', 'wifi'),
        'Can you explain how the internet works?': ('technology', 'internet'),
        'Explain how a battery works.': ('technology', 'battery'),
        'How does a wind turbine generate electricity?': ('technology', 'wind-turbine'),
        'How does an LED light work?': ('technology', 'led'),
        'How does an electric motor work?': ('technology', 'electric-motor'),
        'How does a car engine work?': ('technology', 'car-engine'),
        'How do aeroplanes fly?': ('technology', 'aeroplanes'),
        'Explain how rockets work.': ('technology', 'rockets'),
        'How do bicycle gears work?': ('technology', 'bicycle-gears'),
        'How do car brakes work?': ('technology', 'brakes'),
        'How does a thermostat work?': ('technology', 'thermostat'),
        'How does an air conditioner cool a room?': ('technology', 'air-conditioner'),
        'How does an induction hob cook food?': ('technology', 'induction-hob'),
        'How does a vacuum cleaner pick up dirt?': ('technology', 'vacuum-cleaner'),
        'How does a digital camera take a picture?': ('technology', 'digital-camera'),
        'How does a barcode scanner work?': ('technology', 'barcode-scanner'),
        "What does a computer's processor do?": ('technology', 'processor'),
        'What is the difference between RAM and storage?': ('technology', 'ram-storage'),
        'Explain binary code.': ('technology', 'binary'),
        'Can you explain cloud computing?': ('technology', 'cloud-computing'),
        'How does a loudspeaker produce sound?': ('technology', 'loudspeaker'),
        'How does a microphone work?': ('technology', 'microphone'),
        'How does a radio work?': ('technology', 'radio'),
        'How does an X-ray machine see inside the body?': ('technology', 'x-ray'),
        'How does an MRI scanner work?': ('technology', 'mri'),
        'How does a pressure cooker cook food faster?': ('technology', 'pressure-cooker'),
        'How does contactless payment work?': ('technology', 'contactless'),
        'What does a fuse do?': ('technology', 'fuse'),
        'How does a hydroelectric dam generate electricity?': ('technology', 'hydroelectric'),
        'How does the power grid get electricity to our homes?': ('technology', 'power-grid'),
        'How does Bluetooth work?': ('technology', 'bluetooth'),
        'What is an algorithm?': ('technology', 'algorithm'),
        'Explain machine learning.': ('technology', 'machine-learning'),
        'What is a large language model?': ('technology', 'llm'),
        'How does a toaster work?': ('technology', 'toaster'),
        'How does an electric kettle switch itself off?': ('technology', 'kettle-switch'),
        'How does sunscreen protect skin?': ('technology', 'sunscreen'),
        'How does a lift work?': ('technology', 'lift'),
        'How does a hearing aid help people hear?': ('technology', 'hearing-aid'),
        'How does an infrared thermometer measure temperature without touching?': ('technology', 'infrared-thermometer'),
        'How does a QR code work?': ('technology', 'qr-code'),
        'How does a smartwatch count your steps?': ('technology', 'step-counter'),
    },
    'heldout': {
        'Explain photosynthesis.': ('biology', 'photosynthesis'),
        'Can you explain meiosis?': ('biology', 'meiosis'),
        'What do the kidneys do?': ('biology', 'kidneys'),
        'What are decomposers?': ('biology', 'decomposers'),
        'How does pollination work?': ('biology', 'pollination'),
        'What is metamorphosis?': ('biology', 'metamorphosis'),
        'How do our ears hear sounds?': ('biology', 'hearing'),
        'Why do people get allergies?': ('biology', 'allergies'),
        'Explain dominant and recessive alleles.': ('biology', 'dominant-recessive'),
        'What are stem cells?': ('biology', 'stem-cells'),
        'What is the pH scale?': ('chemistry', 'ph-scale'),
        'What is the difference between exothermic and endothermic reactions?': ('chemistry', 'exo-endothermic'),
        'What is an isotope?': ('chemistry', 'isotopes'),
        'What are polymers?': ('chemistry', 'polymers'),
        'How does chromatography separate substances?': ('chemistry', 'chromatography'),
        'What are the noble gases?': ('chemistry', 'noble-gases'),
        'What is an alloy?': ('chemistry', 'alloys'),
        'Can you explain sublimation?': ('chemistry', 'sublimation'),
        'What is an emulsion?': ('chemistry', 'emulsions'),
        'Why do fireworks have different colours?': ('chemistry', 'fireworks'),
        'Explain tsunamis.': ('earth science', 'tsunami'),
        'How do hailstones form?': ('earth science', 'hail'),
        'What causes the tides?': ('earth science', 'tides'),
        'What is a solar eclipse?': ('earth science', 'solar-eclipse'),
        'How do glaciers form and move?': ('earth science', 'glaciers'),
        'What causes the northern lights?': ('earth science', 'aurora'),
        'What is a comet?': ('earth science', 'comets'),
        'What is a light-year?': ('earth science', 'light-year'),
        'How does a geyser work?': ('earth science', 'geyser'),
        'What is a monsoon?': ('earth science', 'monsoon'),
        'How do pulleys make lifting easier?': ('physics', 'pulleys'),
        'Explain the Doppler effect.': ('physics', 'doppler'),
        'How do lenses work?': ('physics', 'lenses'),
        'Why does static electricity build up?': ('physics', 'static-electricity'),
        'How does an electromagnet work?': ('physics', 'electromagnet'),
        'Why do materials expand when they are heated?': ('physics', 'thermal-expansion'),
        'What is terminal velocity?': ('physics', 'terminal-velocity'),
        'How does a pendulum work?': ('physics', 'pendulum'),
        'What is half-life?': ('physics', 'half-life'),
        "What is Hooke's law?": ('physics', 'hookes-law'),
        'How does a microwave oven heat food?': ('technology', 'microwave-oven'),
        'How does GPS work out where you are?': ('technology', 'gps'),
        'Explain how solar panels make electricity.': ('technology', 'solar-panels'),
        'How does encryption keep messages secret?': ('technology', 'encryption'),
        'How do noise-cancelling headphones work?': ('technology', 'noise-cancelling'),
        'How do fibre-optic cables carry information?': ('technology', 'fibre-optics'),
        'How does a 3D printer work?': ('technology', '3d-printer'),
        'How does a smoke alarm detect smoke?': ('technology', 'smoke-alarm'),
        'How does a vacuum flask keep drinks hot?': ('technology', 'vacuum-flask'),
        'How do airbags protect people in a crash?': ('technology', 'airbags'),
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
    for i, line in enumerate(lines):
        r = records[i] if i < len(records) else None
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
        if r is not None and isinstance(r, dict) and (msgs[0]["content"] != r.get("instruction") or msgs[1]["content"] != r.get("output")):
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
