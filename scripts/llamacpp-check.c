// llamacpp-check: the few things scripts/check-gguf-llamacpp.sh asks of
// llama.cpp's library, built against it by that script (not part of train).
//
//   llamacpp-check greedy MODEL.gguf LORA.gguf|- "PROMPT" N
//       tokenizes PROMPT with the model's own tokenizer (BOS added as the
//       vocabulary says), decodes N tokens greedily (argmax of the logits,
//       no sampler state), prints "prompt: ids" and "new: ids", and exits 3
//       when llama.cpp logged any warning or error while loading.
//   llamacpp-check quantize IN.gguf OUT.gguf q8_0|q4_0
//       llama_model_quantize with the default parameters (llama-quantize).
//   llamacpp-check cmp A.gguf B.gguf
//       compares the data of every tensor both files hold with the same type,
//       byte for byte; prints each tensor whose types differ, and exits 1 when
//       any same-typed tensor differs or none was compared.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "llama.h"

static int warnings = 0;

static void log_cb(enum ggml_log_level level, const char *text, void *data) {
    (void)data;
    if (level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_ERROR) {
        warnings++;
        fprintf(stderr, "llama.cpp %s: %s", level == GGML_LOG_LEVEL_WARN ? "warning" : "error", text);
    }
}

static int greedy(const char *path, const char *lora, const char *prompt, int n) {
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *model = llama_model_load_from_file(path, mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", path);
        return 1;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 512;
    cp.n_batch = 512;
    cp.n_threads = 1;
    cp.n_threads_batch = 1;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "cannot make a context for %s\n", path);
        return 1;
    }
    if (strcmp(lora, "-") != 0) {
        struct llama_adapter_lora *a = llama_adapter_lora_init(model, lora);
        if (!a) {
            fprintf(stderr, "cannot load the adapter %s\n", lora);
            return 1;
        }
        float scale = 1.0f;
        if (llama_set_adapters_lora(ctx, &a, 1, &scale) != 0) {
            fprintf(stderr, "cannot apply the adapter %s\n", lora);
            return 1;
        }
    }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    int n_vocab = llama_vocab_n_tokens(vocab);
    llama_token ids[512];
    int np = llama_tokenize(vocab, prompt, (int)strlen(prompt), ids, 512, true, false);
    if (np < 0 || np + n > 512) {
        fprintf(stderr, "prompt too long\n");
        return 1;
    }
    printf("prompt:");
    for (int i = 0; i < np; i++) printf(" %d", ids[i]);
    printf("\nnew:");
    struct llama_batch batch = llama_batch_get_one(ids, np);
    for (int i = 0; i < n; i++) {
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "decode failed at token %d\n", i);
            return 1;
        }
        const float *logits = llama_get_logits_ith(ctx, -1);
        llama_token best = 0;
        for (llama_token t = 1; t < n_vocab; t++) {
            if (logits[t] > logits[best]) best = t;
        }
        printf(" %d", best);
        ids[np + i] = best;
        batch = llama_batch_get_one(&ids[np + i], 1);
    }
    printf("\n");
    llama_free(ctx);
    llama_model_free(model);
    return warnings > 0 ? 3 : 0;
}

static int quantize(const char *in, const char *out, const char *type) {
    struct llama_model_quantize_params qp = llama_model_quantize_default_params();
    if (strcmp(type, "q8_0") == 0) {
        qp.ftype = LLAMA_FTYPE_MOSTLY_Q8_0;
    } else if (strcmp(type, "q4_0") == 0) {
        qp.ftype = LLAMA_FTYPE_MOSTLY_Q4_0;
    } else {
        fprintf(stderr, "type %s: q8_0 or q4_0\n", type);
        return 1;
    }
    qp.nthread = 1;
    return llama_model_quantize(in, out, &qp) == 0 ? 0 : 1;
}

static int cmp(const char *pa, const char *pb) {
    struct gguf_init_params ip = {true, NULL};
    struct gguf_context *a = gguf_init_from_file(pa, ip), *b = gguf_init_from_file(pb, ip);
    if (!a || !b) {
        fprintf(stderr, "cannot read %s or %s\n", pa, pb);
        return 1;
    }
    FILE *fa = fopen(pa, "rb"), *fb = fopen(pb, "rb");
    int same = 0, differ = 0, othertype = 0;
    for (int64_t i = 0; i < gguf_get_n_tensors(a); i++) {
        const char *name = gguf_get_tensor_name(a, i);
        int64_t j = gguf_find_tensor(b, name);
        if (j < 0) continue;
        enum ggml_type ta = gguf_get_tensor_type(a, i), tb = gguf_get_tensor_type(b, j);
        if (ta != tb) {
            printf("  %s: %s in %s, %s in %s (not compared)\n", name, ggml_type_name(ta), pa, ggml_type_name(tb), pb);
            othertype++;
            continue;
        }
        size_t n = gguf_get_tensor_size(a, i);
        char *xa = malloc(n), *xb = malloc(n);
        fseek(fa, (long)(gguf_get_data_offset(a) + gguf_get_tensor_offset(a, i)), SEEK_SET);
        fseek(fb, (long)(gguf_get_data_offset(b) + gguf_get_tensor_offset(b, j)), SEEK_SET);
        if (fread(xa, 1, n, fa) != n || fread(xb, 1, n, fb) != n || memcmp(xa, xb, n) != 0) {
            printf("  %s (%s): bytes differ\n", name, ggml_type_name(ta));
            differ++;
        } else {
            same++;
        }
        free(xa);
        free(xb);
    }
    printf("tensors byte-identical: %d, differing: %d, of other types: %d\n", same, differ, othertype);
    return (differ == 0 && same > 0) ? 0 : 1;
}

int main(int argc, char **argv) {
    llama_log_set(log_cb, NULL);
    llama_backend_init();
    if (argc == 6 && strcmp(argv[1], "greedy") == 0) return greedy(argv[2], argv[3], argv[4], atoi(argv[5]));
    if (argc == 5 && strcmp(argv[1], "quantize") == 0) return quantize(argv[2], argv[3], argv[4]);
    if (argc == 4 && strcmp(argv[1], "cmp") == 0) return cmp(argv[2], argv[3]);
    fprintf(stderr, "usage: llamacpp-check greedy MODEL LORA|- PROMPT N | quantize IN OUT q8_0|q4_0 | cmp A B\n");
    return 2;
}
