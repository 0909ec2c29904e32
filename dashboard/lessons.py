"""The explanations shown next to the controls: plain English for someone who knows basic Python.

Each box: what it is, why it matters, what to watch for, common mistakes. Text lives here (not in
core/) so the engine stays free of teaching prose and the pages stay short.
"""


def box(title, what, why, watch, mistakes):
    return {"title": title, "what": what, "why": why, "watch": watch, "mistakes": mistakes}


FINE_TUNING = box(
    "Fine-tuning",
    "Taking a model that already learned language from billions of words and training it a little "
    "more on a few hundred examples of the one thing you want it to do.",
    "Pre-training a model costs months of GPU time; fine-tuning reuses all of that and needs minutes. "
    "Like a smart student who already reads and writes well learning one new subject.",
    "The model keeps its general skills only if the new lessons are short and gentle: a small learning "
    "rate, a few epochs.",
    "Expecting fine-tuning to teach lots of new facts (it mostly teaches style, format and behaviour); "
    "training too long so the model forgets what it knew.",
)

MODEL = box(
    "A causal language model",
    "A network that reads a sequence of tokens and predicts the next one. Repeating that prediction "
    "writes text. Its *parameters* (weights) are the numbers training adjusts.",
    "The parameter count decides how much memory and time everything takes: each parameter is 4 bytes "
    "in fp32, 2 in bf16/fp16.",
    "`trainable` parameters: with full fine-tuning all are trained; with LoRA only a tiny fraction.",
    "Picking a model too big for the machine; picking a *base* model when you want a chat assistant "
    "(an *Instruct* model already knows how to answer).",
)

TOKENIZER = box(
    "Tokens",
    "The model never sees letters: a tokenizer cuts text into pieces (tokens) from a fixed vocabulary "
    "and turns each into an integer id.",
    "Everything is counted in tokens: the maximum length, memory, speed, cost. Common words are one "
    "token; rare words split into several.",
    "Spaces belong to the token that follows them (shown as ·); numbers and other languages often "
    "split into many tokens.",
    "Counting words or characters instead of tokens when choosing `max_length`.",
)

CHAT_TEMPLATE = box(
    "The chat template",
    "A recipe that turns a conversation (a list of messages with roles) into one string with special "
    "markers around each turn, such as `<|im_start|>user`.",
    "A chat model was trained with one exact template. Fine-tune and generate with the same one, or "
    "the model sees a format it never learned.",
    "Models without a template (GPT-2, most base models) get TuneLab's ChatML fallback, and the page "
    "says so.",
    "Writing prompts by hand without the template, then wondering why the tuned model rambles.",
)

BEFORE = box(
    "The 'before' answer",
    "What the untouched model says to a question, decoded greedily (always the most likely token).",
    "You keep it to compare with the fine-tuned model's answer on the Generate and Evaluate pages.",
    "Greedy decoding is deterministic: the same prompt gives the same answer, so the comparison is fair.",
    "Judging a model on one answer; use the Evaluate page's held-out set for a real measurement.",
)

DATA_FORMAT = box(
    "Data formats",
    "Files come in many shapes (Alpaca `instruction/input/output`, ShareGPT conversations, CSV, plain "
    "text). A *format plugin* reads one shape into TuneLab's canonical records: `messages` for chat, "
    "`text` for raw text.",
    "After this step everything else (templates, tokens, training) is the same whatever file you brought.",
    "The detected format is a guess from the file's first bytes: check the preview.",
    "Training a chat model on raw `text` records: it then learns to continue documents, not to answer.",
)

VALIDATION = box(
    "Checking the data",
    "Before spending compute, every record is read and checked: missing fields, empty answers, exact "
    "duplicates, token lengths.",
    "A model learns whatever is in the data, mistakes included. Ten bad rows in three hundred is a lot.",
    "Duplicates (the model memorises them), empty answers (it learns to say nothing), examples longer "
    "than `max_length` (they are cut, and a cut answer teaches the model to stop mid-sentence).",
    "Skipping the check and discovering the problem after an hour of training.",
)

LENGTHS = box(
    "Token lengths and max_length",
    "How many tokens each example has, and the cut-off `max_length`: longer examples are truncated.",
    "Memory and time grow with sequence length (attention and activations). A `max_length` just above "
    "most examples wastes nothing.",
    "The red line: examples to its right are cut. Aim for the 95th percentile or above.",
    "Setting `max_length` to the model's maximum (thousands) 'to be safe': memory explodes for nothing, "
    "since batches are padded only to their longest member anyway.",
)

MASKING = box(
    "Which tokens are trained",
    "Each token has a *label*: the token the model should predict there. Prompt tokens get the label "
    "-100, which the loss ignores; only the assistant's reply (green) is trained.",
    "You want the model to learn to *answer*, not to write the questions. Masking the prompt also "
    "stops long prompts from dominating the loss.",
    "The end-of-turn marker after the reply is green too: that is how the model learns to stop.",
    "Training on the prompt by accident (the model starts asking itself questions); a truncation that "
    "cuts away the whole answer (nothing left to learn — such rows are dropped).",
)

SCHEDULE = box(
    "Learning-rate schedule",
    "The learning rate (how big each update step is) changes over training: it *warms up* from zero, "
    "then stays or decays towards zero.",
    "Warm-up avoids wrecking the pretrained weights with large first steps while the optimizer's "
    "statistics are still noisy; decay lets the model settle at the end.",
    "The peak is `lr`; the shaded area is the warm-up.",
    "A learning rate copied from training-from-scratch recipes (1e-3): far too high for fine-tuning.",
)

MEMORY_ESTIMATE = box(
    "Where training memory goes",
    "Weights (the model), gradients (one number per trained weight), optimizer state (Adam keeps two "
    "more per trained weight), activations (saved for the backward pass; grow with batch × length × "
    "layers) and logits (batch × length × vocabulary).",
    "If the sum exceeds the machine's memory, training crashes with *out of memory* before the first step.",
    "With full fine-tuning, gradients + optimizer are 3× the weights. LoRA makes both almost vanish.",
    "Raising batch size to go faster and hitting out-of-memory: use gradient accumulation instead.",
)

LORA = box(
    "LoRA",
    "Instead of changing every weight, LoRA freezes the model and trains two small matrices per layer "
    "whose product is added to a weight matrix. `r` is their inner size.",
    "Far fewer trainable parameters: much less memory for gradients and optimizer, a small file to "
    "save, and less forgetting.",
    "`alpha / r` scales the update; keep alpha = 2 × r as a start. LoRA often wants a higher learning "
    "rate (1e-4 – 3e-4) than full fine-tuning (1e-5 – 5e-5).",
    "Using a full fine-tuning learning rate with LoRA (nothing happens) or the reverse (the model breaks).",
)

CHECKPOINTING = box(
    "Gradient checkpointing",
    "Instead of keeping every layer's activations for the backward pass, keep only a few and recompute "
    "the rest when needed.",
    "Activations are often the largest part of memory with long sequences; checkpointing cuts them "
    "to a fraction.",
    "It costs about 20–30 % more time per step (the recomputation).",
    "Turning it on for a tiny model on a big GPU: slower, and no memory problem to solve.",
)

PRECISION = box(
    "Mixed precision",
    "Doing most maths in 16-bit numbers (bf16 or fp16) instead of 32-bit (fp32).",
    "Half the memory for activations, and much faster on GPUs with tensor cores.",
    "bf16 needs a recent GPU (Ampere or newer); fp16 works on older ones (a T4) with a loss scaler. "
    "CPUs train in fp32.",
    "fp16 without loss scaling: gradients underflow to zero and the loss stops moving (or becomes NaN).",
)

BATCH = box(
    "Batch size and gradient accumulation",
    "`batch_size` examples go through the model at once; `grad_accum` adds up gradients over several "
    "batches before one update. The effective batch is their product.",
    "A bigger effective batch gives smoother, more reliable updates. Accumulation gets it without the "
    "memory of a big batch.",
    "Memory grows with `batch_size` (activations, logits) but not with `grad_accum`.",
    "Comparing runs with different effective batches at the same learning rate.",
)

PLUGINS = box(
    "Plugins",
    "Data formats, samplers and evaluators are plugins: small Python modules that register objects "
    "through hooks. The built-in ones are plugins too, written exactly as anyone else would.",
    "You can add a format for your own data, a new decoding strategy or a metric without touching "
    "TuneLab, and share it as a pip package.",
    "A plugin that fails to load is shown here with its error; the rest of TuneLab carries on.",
    "Two plugins registering the same name: the built-in wins, and the clash is listed.",
)

# Recommended ranges shown under each hyperparameter on lesson 3 (the key's meaning comes from
# core.config.CONFIG_DOCS; this is the advice on top).
RECOMMENDED = {
    "method": "lora on small machines or big models; full for a small model you can afford to train whole",
    "lora.r": "8 – 32",
    "lora.alpha": "2 × r",
    "lora.dropout": "0 – 0.1",
    "max_length": "just above the 95th percentile of your examples' lengths (lesson 2)",
    "data.val_fraction": "0.05 – 0.2",
    "epochs": "1 – 3 (more overfits a small data set)",
    "max_steps": "0 (use epochs), or a small number for a quick try",
    "batch_size": "as large as memory allows: 4 – 16",
    "grad_accum": "effective batch (batch_size × grad_accum) of 8 – 64",
    "lr": "full: 1e-5 – 1e-4 · LoRA: 1e-4 – 1e-3",
    "scheduler": "cosine or linear",
    "warmup_ratio": "0.03 – 0.1",
    "weight_decay": "0 – 0.1",
    "max_grad_norm": "1.0",
    "eval_every": "about 10 evaluations per run",
    "save_every": "0 for short runs; a few hundred steps for long ones",
    "seed": "any; change it to see how much a result is luck",
    "precision": "auto",
    "gradient_checkpointing": "on when memory is tight, off otherwise",
    "train_on_prompt": "off",
}
