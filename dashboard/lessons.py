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

# -- lesson 4: fine-tune -------------------------------------------------------------------------

LOSS_CURVE = box(
    "The loss curve",
    "The loss is how wrong the model's next-token guesses are on the training batches, averaged over the "
    "trained (green) tokens: lower is better. Each point is one optimizer step. The smoothed line is a "
    "running average (like TensorBoard's) so the trend shows through the noise.",
    "It is the heartbeat of training: falling means the model is learning the examples; flat means it is "
    "not; a jump means something went wrong.",
    "A quick drop in the first steps, then a slow decline. Each batch holds different examples, so the raw "
    "line is jagged; judge the smoothed line. **A flat curve** from the start usually means the learning rate "
    "is too low. **Spikes** are often one unusual batch (harmless if the curve recovers) or a learning rate "
    "that is too high (if they grow).",
    "Reading one step's loss as the answer; smoothing so much that a real problem is hidden; comparing loss "
    "values between models with different tokenizers.",
)

VALIDATION_LOSS = box(
    "Validation loss and overfitting",
    "The same loss, measured on held-out examples the model never trains on (the red dotted line, every "
    "`eval_every` steps and at the end).",
    "Training loss only says the model fits the examples it saw; validation loss says whether that carries "
    "over to new ones — which is what you actually want.",
    "**Overfitting**: the training loss keeps falling while the validation loss turns up. The model is "
    "memorising its examples. Stop there (fewer epochs or steps), or use more data, LoRA or dropout.",
    "Training for many epochs on a few hundred examples because the training loss still falls; having no "
    "validation set at all (`val_fraction` 0).",
)

TRAINING_SIGNALS = box(
    "Learning rate, gradient norm and speed",
    "The learning rate actually used at each step (the schedule of lesson 3); the gradient norm (how big the "
    "update wanted to be, before clipping to `max_grad_norm`); tokens per second (the training speed).",
    "They explain the loss curve: a loss spike often follows a gradient-norm spike; a loss that stops moving "
    "at the end may just be the learning rate decaying to zero.",
    "The gradient norm usually falls and settles; repeated large spikes mean the learning rate is too high. "
    "Tokens per second should be steady; a drop means the machine is busy with something else.",
    "Turning gradient clipping off (0) and getting a NaN loss; reading tokens/s on the first step (it "
    "includes warm-up work).",
)

RUNS = box(
    "Runs, stopping and resuming",
    "Each Start makes a folder under `runs/` with its config, metrics, status, checkpoints and, at the end, "
    "`final/` (the trained model). Training runs in a separate worker process.",
    "Closing the tab does not stop training, and a run can be stopped and resumed from its last checkpoint "
    "with no step lost or repeated. Overlaying runs is how you learn what a setting does.",
    "Compare runs that differ in one setting only (learning rate, say), with the same seed.",
    "Changing several settings at once and not knowing which one helped; forgetting that a stopped run has "
    "no `final/` model until it is resumed and finishes.",
)

FAILED_HINT = (
    "What to do: read the error above (it names the cause), change the setting on **3 · Set up training**, "
    "and Start again. An *interrupted* run (its worker was killed) can be **resumed** from its last "
    "checkpoint. The worker's full output is in the run's `log.txt`, shown below."
)

# -- lesson 5: generate ---------------------------------------------------------------------------

NEXT_TOKEN = box(
    "The next-token distribution",
    "At every step the model gives each of its ~49,000 tokens a probability of coming next (grey bars: the "
    "most likely ones). A *sampler* reshapes that distribution and picks from it (blue bars: what it "
    "actually draws from).",
    "The same model writes dull, lively or nonsensical text depending only on the sampler. Fine-tuning "
    "changes the grey bars; the sampler changes the blue ones.",
    "Greedy puts everything on the top token. Temperature below 1 makes the tall bars taller; above 1 "
    "flattens them. Top-k and top-p cut the tail to zero and rescale the rest.",
    "Blaming the model for rambling caused by a high temperature; using sampling when you need a "
    "reproducible answer (use greedy, or a fixed seed).",
)

SAMPLING = box(
    "Samplers",
    "The rule that turns probabilities into a choice: *greedy* (always the top token), *temperature* "
    "(sample from a sharpened or flattened distribution), *top-k* / *top-p* / *min-p* (sample only among "
    "the likely tokens), *beam* (search several continuations, keep the best). Each is a plugin.",
    "Factual, short answers want greedy or beam; creative text wants some randomness with the tail cut off "
    "(top-p 0.9, temperature 0.7 is a common start).",
    "With sampling, the same prompt gives a different answer per seed: try a few before judging.",
    "Comparing base and tuned models with different samplers or seeds: the difference you see may be the "
    "sampler's, not the training's.",
)

BEFORE_AFTER = box(
    "Base vs tuned",
    "The same prompt, the same sampler and seed, two models: the one you started from and the one your "
    "run produced (`final/`).",
    "It is the quickest way to see what training changed: tone, length, format, and whether it stops "
    "cleanly at the end of its answer.",
    "Ask questions like the training examples and also unlike them: a good fine-tune improves the first "
    "without breaking the second.",
    "Judging from one prompt (use lesson 6 for a measurement); asking about facts the data never contained.",
)

# -- lesson 6: evaluate ---------------------------------------------------------------------------

HELDOUT = box(
    "Held-out evaluation",
    "Both models answer the same prompts from a file they never trained on; *evaluator* plugins score the "
    "answers against the reference answers.",
    "A model always looks good on its own training examples. Only unseen examples tell you whether it "
    "learned the skill or memorised the answers.",
    "Each metric measures one thing: perplexity (how expected the reference is), ROUGE-L and keyword "
    "coverage (overlap with the reference), exact match (identical answers). Look at several, and read the "
    "answers.",
    "Evaluating on the training file; trusting a difference measured on 8 examples (it is a hint, not "
    "proof — use more samples on a GPU).",
)

METRIC_CHANGE = box(
    "Best and worst samples",
    "For one metric, the change from base to tuned on each example, sorted: where training helped most "
    "and where it hurt.",
    "Averages hide failures. The worst samples show what the model got worse at, often the most useful "
    "thing to learn from an evaluation.",
    "A good fine-tune improves most samples a little; a few large losses can mean forgetting, or examples "
    "unlike the training data.",
    "Reading only the mean; treating a metric's number as the truth without reading the two answers.",
)
