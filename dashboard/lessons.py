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

DATA_PARALLEL = box(
    "Data parallelism (workers)",
    "`workers` runs N training processes, each with a full copy of the model. Each step, worker r takes "
    "every N-th micro-batch; after the backward pass the workers average their gradients, so every copy "
    "takes exactly the same update and stays identical.",
    "More examples per step without more memory per process: on N GPUs a step takes about 1/N of the time. "
    "The effective batch is batch_size × grad_accum × workers.",
    "What is copied: the model and optimizer, on every worker. What is averaged: the gradients, once a step. "
    "So `workers: 2, grad_accum: 1` sees exactly the data of `workers: 1, grad_accum: 2`, and the two loss "
    "curves match: data parallelism is accumulation spread over processes.",
    "Expecting a speed-up on one CPU: the workers share its cores (and exchange gradients every step), so "
    "here they show how it works rather than make it faster. Raising workers without lowering grad_accum "
    "changes the effective batch, and with it the steps per epoch and the right learning rate.",
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

EXPERIMENT = box(
    "An experiment: one setting, several values",
    "Two to four short runs of your planned run that differ in **one** setting only (the learning rate, say), "
    "with the same seed, the same data in the same order and the same number of steps. Their loss curves, "
    "drawn on one chart, show what that setting does; the verdict puts it into words.",
    "Reading about a learning rate that is \"too high\" is not the same as watching a loss jump up. Keeping "
    "everything else equal is what makes the comparison fair: a different seed or data order alone moves a "
    "short curve by a few percent, so change two things at once and you cannot tell which one did it.",
    "Whether a curve falls, barely moves or jumps up (diverges); which run ends lowest on the validation "
    "examples it never trained on (the dashed line); how noisy each curve is. The runs are short, so the "
    "verdict calls two runs a tie when they end within their noise of each other.",
    "Reading a 6-step experiment as the last word (a short run favours a high learning rate: over a whole run "
    "the best one is often a little lower); comparing runs that differ in more than one setting; "
    "trusting one lucky run (run it again with another seed before you rely on it).",
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

# -- Questions & glossary: the best practices, two boxes lessons 3 and 6 lacked, and the glossary --------

DATA_QUALITY = box(
    "Data quality over quantity",
    "A few hundred clean, consistent examples of exactly what you want beat thousands of mixed, sloppy ones. "
    "Every answer in TuneLab's teaching set follows the same four-part house style, and each was checked.",
    "The model copies whatever the data does — its format, its tone, its length and its mistakes. Fine-tuning "
    "mostly teaches *how* to answer, and that is learned from a surprisingly small number of good examples.",
    "Read twenty examples yourself before training. Check for duplicates, empty answers, answers that are cut "
    "by `max_length`, and the same prompt in both the training and the held-out file (lesson 2 checks most of "
    "these).",
    "Scraping lots of data and never reading it; mixing styles (the model learns an average of them); "
    "evaluating on prompts that were also in the training file.",
)

MEMORY_OPTIMISATION = box(
    "Memory optimisation",
    "A ladder of tricks, each shrinking one part of training memory: a smaller batch (with gradient "
    "accumulation to keep the effective batch), a shorter `max_length`, gradient checkpointing, LoRA, and "
    "16-bit mixed precision on a GPU.",
    "Out-of-memory is the most common reason a first fine-tuning run fails, and it is predictable: estimate "
    "before you train, measure one step, then start.",
    "Try the rungs in order and re-estimate after each; stop at the first one that fits. Each one costs "
    "something: speed (checkpointing), context (shorter sequences), or capacity (LoRA).",
    "Reaching for a bigger machine first; lowering the batch size without raising `grad_accum` (which changes "
    "the training, not just the memory); forgetting that other programs use the same RAM.",
)

LR_AND_BATCH = box(
    "Finding the learning rate and batch size",
    "The learning rate is how big each update is; the batch size is how many examples each update averages "
    "over. They interact: a bigger effective batch gives steadier updates and tolerates a larger rate.",
    "A learning rate that is too low wastes the run (the loss barely moves); too high breaks the model's "
    "existing skills (the loss jumps or turns NaN). Nothing else matters as much.",
    "Do short trial runs (set `max_steps` to 20–30) at rates a factor of 3 apart, inside the recommended range "
    "for your method, and keep the one whose *validation* loss falls fastest without spikes. Pick the largest "
    "batch that fits in memory, then use `grad_accum` to reach an effective batch of 8–64.",
    "Using a LoRA rate for full fine-tuning (or the reverse); changing the batch size and the rate at the same "
    "time; judging a rate by the first few steps of training loss alone.",
)

MEASURING = box(
    "Measuring improvement",
    "Score the base model and the tuned model on the same held-out prompts, with the same sampler and seed, "
    "using several metrics — and read some of the answers side by side.",
    "A fine-tuned model always looks good on its training examples. Only prompts it never saw show whether "
    "it learned the skill; only a comparison with the base model shows what training added.",
    "Choose metrics that match the goal: perplexity for 'does it expect answers like these', ROUGE-L and "
    "keyword coverage for content, a format check (here: the house style) for style.",
    "Measuring on the training file; reporting one lucky answer; comparing models decoded with different "
    "samplers; trusting a small difference measured on a handful of prompts.",
)

EPOCHS_STEPS = box(
    "Epochs and steps",
    "An *epoch* is one pass over every training example. A *step* is one update of the weights, after "
    "`batch_size × grad_accum` examples. Steps per epoch = training examples ÷ effective batch.",
    "Together they decide how long training takes and how much the model changes. With a few hundred "
    "examples, one to three epochs is usually enough.",
    "The validation loss: while it falls, more training helps; when it turns up while the training loss "
    "keeps falling, the model is memorising. `max_steps` (when above 0) overrides `epochs`, handy for quick "
    "tries.",
    "Many epochs on a small data set 'because the loss still falls'; comparing runs by epochs when their "
    "effective batches differ (compare by examples seen instead).",
)

METRICS = box(
    "Perplexity, ROUGE-L and keyword coverage",
    "*Perplexity* says how surprised the model is by the reference answers: roughly, how many tokens it "
    "hesitates between at each step (lower is better). *ROUGE-L* scores the longest run of words the model's "
    "answer shares with the reference (0 to 1). *Keyword coverage* is the share of the reference's key terms "
    "the answer mentions.",
    "Perplexity needs no generation, so it is fast and stable; ROUGE-L and keywords judge what the model "
    "actually writes. Together they catch different failures.",
    "Perplexity can fall a lot while answers change little, and ROUGE-L rewards copying wording, not being "
    "right. Read the answers too.",
    "Comparing perplexities between models with different tokenizers (they count different tokens); "
    "treating ROUGE-L as a measure of correctness.",
)

# One or two plain sentences per term, in alphabetical order (the Questions & glossary page and
# docs/guide.md both show this list).
GLOSSARY = {
    "Activation": "An intermediate result inside the network, such as a layer's output. Training keeps many "
                  "of them for the backward pass, and they grow with batch size × sequence length.",
    "AdamW": "The usual optimizer for fine-tuning. It adapts the step size for each weight from running "
             "averages of its gradients, and applies weight decay separately.",
    "Batch": "The group of examples processed together in one forward and backward pass (`batch_size`).",
    "Beam search": "A decoding method that keeps several candidate continuations at once and returns the most "
                   "likely whole sequence. Good for short, factual answers; slower than greedy.",
    "bf16": "Brain floating point, a 16-bit number format with the same range as fp32 but less precision. "
            "Safe for training on recent GPUs (NVIDIA Ampere or newer) without loss scaling.",
    "Chat template": "The model's recipe for turning a list of chat messages into one string with special "
                     "markers around each turn. Train and generate with the same template.",
    "Checkpoint": "A saved copy of the training state (weights, optimizer state, step) partway through a "
                  "run, so it can be resumed or rolled back.",
    "Effective batch": "`batch_size × grad_accum`: how many examples contribute to each weight update.",
    "Epoch": "One complete pass over the training data.",
    "Evaluation (held-out) set": "Examples kept out of training and used only to score the model, so the "
                                 "score reflects new inputs rather than memory.",
    "fp16": "Half precision: a 16-bit format with a small range. It needs a loss scaler during training so "
            "that tiny gradients do not round to zero; works on older GPUs.",
    "fp32": "Single precision, 32-bit numbers: 4 bytes per value. The default on CPUs, and the safest.",
    "Full fine-tuning": "Training every weight of the model. The most capable option, and the most memory: "
                        "gradients and AdamW's state add about three times the weights' size.",
    "Gradient": "For each weight, the direction and size of the change that would lower the loss, computed "
                "by the backward pass.",
    "Gradient accumulation": "Adding up gradients over several batches before one update (`grad_accum`), to "
                             "get the effect of a big batch with the memory of a small one.",
    "Gradient checkpointing": "Saving memory by keeping only some activations and recomputing the rest "
                              "during the backward pass. Costs extra time per step.",
    "Greedy decoding": "Always picking the single most likely next token. Deterministic: the same prompt "
                       "always gives the same answer.",
    "Label masking": "Giving prompt tokens the label -100 so the loss ignores them; the model is trained "
                     "only on the answer it should write.",
    "Learning rate": "How big each weight update is. The most important setting: too low and nothing is "
                     "learned, too high and the model breaks.",
    "Logits": "The raw scores the model gives every token in its vocabulary before they are turned into "
              "probabilities. For a big vocabulary they take a lot of memory.",
    "LoRA": "Low-Rank Adaptation: freeze the model and train two small matrices beside some weight matrices. "
            "Far fewer trainable parameters, so far less memory, and a small file to save.",
    "Loss": "A number saying how wrong the model's next-token predictions are on a batch (cross-entropy). "
            "Training tries to make it smaller.",
    "max_length": "The longest sequence, in tokens, that training uses; longer examples are truncated "
                  "(cut). Memory and time grow with it.",
    "Mixed precision": "Keeping fp32 master weights but doing most of the maths in 16-bit (bf16 or fp16). "
                       "Faster and lighter on GPUs; CPUs train in fp32.",
    "Optimizer state": "The extra numbers the optimizer keeps per trainable weight; AdamW keeps two (8 bytes "
                       "in fp32), twice the size of the weights themselves.",
    "Out of memory (OOM)": "The error when training needs more RAM or GPU memory than the machine has. It "
                           "usually happens on the first step and is predictable from the settings.",
    "Overfitting": "When the model memorises its training examples instead of learning the skill: training "
                   "loss keeps falling while validation loss rises.",
    "Parameters (weights)": "The numbers inside the model that training adjusts. SmolLM2-135M has about 135 "
                            "million of them.",
    "Perplexity": "The exponential of the average loss on some text: roughly how many tokens the model is "
                  "choosing between at each step. Lower means the text is less surprising to the model.",
    "Rank (r)": "The inner size of LoRA's two small matrices. A higher rank means more trainable parameters "
                "and more capacity; 8–32 is typical.",
    "ROUGE-L": "A score from 0 to 1 for how much of the reference answer appears, in order, in the model's "
               "answer (the longest common subsequence of words).",
    "Sampler": "The rule that picks the next token from the model's probabilities: greedy, temperature, "
               "top-k, top-p, beam search.",
    "Scheduler": "The plan for how the learning rate changes during training, such as a warm-up then a "
                 "cosine or linear decay to zero.",
    "Step": "One update of the model's weights (one optimizer step).",
    "Temperature": "Divides the logits before sampling: below 1 makes likely tokens more likely (safer, "
                   "duller); above 1 flattens the distribution (more varied, more mistakes).",
    "Token": "A piece of text — a word, part of a word, or punctuation — that the model reads and writes as "
             "one unit with an integer id.",
    "Tokenizer": "The program that cuts text into tokens and turns them into ids (and back again).",
    "Top-k": "Sampling only among the k most likely tokens.",
    "Top-p (nucleus)": "Sampling only among the most likely tokens whose probabilities add up to p (for "
                       "example 0.9), so the choice widens when the model is unsure.",
    "Validation set": "A slice of the training file (`val_fraction`) held back during training to measure "
                      "the validation loss and spot overfitting.",
    "Vocabulary": "The fixed list of all tokens a tokenizer knows; SmolLM2's has 49,152.",
    "Warm-up": "The first few percent of steps, during which the learning rate climbs from zero to its peak, "
               "so early noisy updates do not damage the pretrained weights.",
}
