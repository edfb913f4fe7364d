/* engine/model.h — a Mixtral/Mistral/Llama ("llama" arch) model: hyperparameters from GGUF
 * metadata and weight views into the mapped file. Read-only after model_load: any thread. */
#pragma once
#include <stdint.h>

#include "gguf.h"
#include "tokenizer.h"

typedef struct ModelConfig {
        uint32_t n_layer;
        uint32_t n_embd;          /* D: hidden size */
        uint32_t n_ff;            /* FF: FFN size of one expert (or the dense FFN) */
        uint32_t n_head;          /* H: query heads */
        uint32_t n_head_kv;       /* KV: key/value heads (GQA: head h reads kv head h / (H/KV)) */
        uint32_t head_dim;        /* hd = D / H */
        uint32_t n_vocab;         /* V */
        uint32_t n_ctx_train;     /* llama.context_length */
        uint32_t n_expert;        /* E: 0 for a dense model */
        uint32_t n_expert_used;   /* k: experts per token (top-k) */
        uint32_t sliding_window;  /* W: 0 = full attention */
        float rope_theta;
        float rms_eps;
} ModelConfig;

/* A row-major weight matrix [rows][cols] in any ggml type; one row is row_bytes. */
typedef struct Matrix {
        const uint8_t *data;
        uint32_t type;
        uint64_t rows, cols;
        uint64_t row_bytes;
} Matrix;

typedef struct LayerWeights {
        float *attn_norm;    /* [D] (dequantized copy) */
        Matrix wq;           /* [H*hd][D] */
        Matrix wk;           /* [KV*hd][D] */
        Matrix wv;           /* [KV*hd][D] */
        Matrix wo;           /* [D][H*hd] */
        float *ffn_norm;     /* [D] */
        Matrix router;       /* [E][D]; rows == 0 for a dense model */
        Matrix *gate;        /* [max(E,1)] each [FF][D] */
        Matrix *up;          /* [max(E,1)] each [FF][D] */
        Matrix *down;        /* [max(E,1)] each [D][FF] */
} LayerWeights;

typedef struct Model {
        ModelConfig cfg;
        GGUFFile *file;
        Tokenizer *tok;
        Matrix tok_embd;     /* [V][D] */
        float *output_norm;  /* [D] */
        Matrix output;       /* [V][D]; the embedding when the file ties them */
        LayerWeights *layers;/* [n_layer] */
        const char *moe_layout; /* "merged", "per-expert" or "dense" */
} Model;

typedef struct ModelError {
        char msg[320];
} ModelError;

/* Load and validate: every tensor's shape and type is checked against the config. */
int model_load(const char *path, ModelError *err, Model **ret_model);
Model *model_free(Model *m);
