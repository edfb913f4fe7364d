/* engine/engine_limits.h — every compile-time limit of the engine, in one place, with units. */
#pragma once

/* --- GGUF files (untrusted) --- */
#define GGUF_MAX_TENSORS        65536u       /* tensors per file */
#define GGUF_MAX_KV             65536u       /* metadata pairs per file */
#define GGUF_MAX_STRING         (1u << 20)   /* bytes per metadata string / key / name */
#define GGUF_MAX_ARRAY          (1u << 24)   /* elements per metadata array */
#define GGUF_MAX_ALIGNMENT      (1u << 16)   /* bytes; must be a power of two */

/* --- the mapped model file (hugepage.h) --- */
#define HUGEPAGE_SETTLED_PERCENT     90      /* % of the file mapped with 2 MiB pages that needs no re-read */
#define HUGEPAGE_REFAULT_RAM_PERCENT 50      /* re-read for 2 MiB pages only files up to this % of physical RAM */

/* --- the thread pool (pool.h) --- */
#define POOL_SPIN_NS            (2 * 1000 * 1000) /* ns a thread polls for the next run (or the
                                                    * end of one) before sleeping: longer than the
                                                    * gaps between the products of a token */
#define POOL_YIELD_AFTER_NS     (50 * 1000)       /* ns of polling after which each poll also
                                                    * yields the CPU (more threads than CPUs) */

/* --- model hyperparameters accepted --- */
#define MODEL_MAX_LAYERS        512
#define MODEL_MAX_EMBD          65536        /* hidden size */
#define MODEL_MAX_FF            262144       /* expert FFN size */
#define MODEL_MAX_HEADS         1024
#define MODEL_MAX_HEAD_DIM      1024
#define MODEL_MAX_EXPERTS       256
#define MODEL_MAX_VOCAB         1048576      /* tokens */
#define MODEL_MAX_CONTEXT       (1u << 24)   /* positions */

/* --- tokenizer --- */
#define TOKENIZER_MAX_PIECE     256          /* bytes per vocabulary piece */
#define TOKENIZER_MAX_INPUT     (64u << 20)  /* bytes of text per tokenize call */

/* --- sessions and KV cache --- */
#define KV_ATTENTION_SINKS      4            /* positions kept forever when a full-attention cache rolls */
#define KV_MAX_POSITION         (1ll << 40)  /* positions one session may reach (a rolling cache goes on past
                                                its slots): over a year at 30,000 tokens/s, while RoPE's angles
                                                (double) keep 2^-12 rad and position arithmetic cannot overflow */
#define KV_DEFAULT_BUDGET       (4ull << 30) /* bytes of KV one in-process session may take by default */
#define FORWARD_MAX_CHUNK       512          /* tokens per forward call (prefill chunk) */
#define FORWARD_EXACT_POSITIONS 1            /* positions below this run on the float (exact) path
                                                even with 8-bit activations: every later token
                                                attends to them (the attention sink), so their
                                                rounding reaches every position, and a router
                                                near-tie flipped there moves the whole sequence
                                                (Q3_K_M fixture: 82% -> 98% of positions agree
                                                with the oracles). One float row per sequence. */
#define ATTN_KEY_BLOCK          256          /* positions per attention key block: a query's keys are
                                                scored and summed block by block (blocks start at
                                                multiples of this position), and a decoded row's
                                                blocks go to several threads */
#define ATTN_SPLIT_MAX_ITEMS    1024         /* (row, KV head, key block) items of one split
                                                attention pass: its partial sums' scratch holds
                                                this many x query heads per KV head x head dim
                                                floats (2 MiB for Mixtral); more stays unsplit */
#define MOE_GROUP_ROWS          64           /* expert rows (token x choice) run in one pool pass:
                                                32 decoding sessions at top-2; a prefill batch runs
                                                its experts in several groups, so its scratch pages
                                                stay untouched past this (or one expert's rows) */

/* --- sampling --- */
#define SAMPLE_MAX_STOPS        16           /* stop strings per request */
#define SAMPLE_MAX_STOP_LEN     256          /* bytes per stop string */
#define SAMPLE_MAX_REPEAT_LAST  4096         /* tokens of repeat-penalty history */
