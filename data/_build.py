import glob, json, os, re
HERE = os.path.dirname(os.path.abspath(__file__))
items = []
for path in sorted(glob.glob(os.path.join(HERE, "_src_*.txt"))):
    text = open(path, encoding="utf-8").read()
    for block in re.split(r"\n(?=@ )", text.strip()):
        lines = block.strip().split("\n")
        split, domain, concept = lines[0][2:].split(" ", 2)
        domain = domain.replace("_", " ")
        f = {}
        for ln in lines[1:]:
            k, v = ln.split(": ", 1)
            assert k not in f, (concept, k)
            f[k] = v.strip()
        assert set(f) == set("QDHEK"), (concept, f.keys())
        out = (f"**Definition:** {f['D']}\n\n**How it works:** {f['H']}\n\n"
               f"**Everyday example:** {f['E']}\n\n**Key terms:** {f['K']}")
        items.append(({"T": "train", "H": "heldout"}[split], domain, concept, f["Q"], out))
cat = {"train": {}, "heldout": {}}
for split in ("train", "heldout"):
    recs = [{"instruction": q, "input": "", "output": o} for s, d, c, q, o in items if s == split]
    for s, d, c, q, o in items:
        if s == split:
            cat[split][q] = (d, c)
    with open(os.path.join(HERE, f"science_tutor_{split}.alpaca.json"), "w", encoding="utf-8") as fh:
        json.dump(recs, fh, ensure_ascii=False, indent=2)
        fh.write("\n")
    with open(os.path.join(HERE, f"science_tutor_{split}.messages.jsonl"), "w", encoding="utf-8") as fh:
        for r in recs:
            fh.write(json.dumps({"messages": [{"role": "user", "content": r["instruction"]},
                                              {"role": "assistant", "content": r["output"]}]},
                                ensure_ascii=False) + "\n")
lines = ["CATALOGUE = {"]
for split in ("train", "heldout"):
    lines.append(f"    {split!r}: {{")
    for q, (d, c) in cat[split].items():
        lines.append(f"        {q!r}: ({d!r}, {c!r}),")
    lines.append("    },")
lines.append("}")
chk = os.path.join(HERE, "check_dataset.py")
src = open(chk, encoding="utf-8").read()
src = re.sub(r"(# --- BEGIN CATALOGUE[^\n]*\n).*?(# --- END CATALOGUE ---)",
             lambda m: m.group(1) + "\n".join(lines) + "\n" + m.group(2), src, flags=re.S)
open(chk, "w", encoding="utf-8").write(src)
print(len(items), "items")
