/* dae.c: run a DAE exported by `python cli.py export CKPT --format npz --out model.npz`:
 *   cc -O2 -std=c99 dae.c -lm -o dae && ./dae model.npz [ROWS.txt]     (rows from ROWS.txt or stdin)
 * Reads rows of D whitespace-separated numbers (D: the model's input width) and prints
 * reconstruct(x) = sigmoid(logits(x)) of each, one row per line.  Format: tinydae/export.py's
 * docstring.  The .npz is a zip of STORED .npy members (np.savez), found by walking the zip's local
 * headers; "model.json" lists the layers, keys in a fixed order, so it is scanned, not parsed.
 * Assumes a little-endian machine, as the arrays ('<f4' or '<f8') are; computes in double.  It trusts
 * its file (an example, not a hardened parser): run it only on exports you made. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { const double *W, *b; int transposed, fan_in, fan_out; char act[16]; } Layer;
static unsigned char *zip;  /* the whole .npz */
static long zip_len;

static void die(const char *what, const char *name) { fprintf(stderr, "dae: %s %s\n", what, name); exit(1); }
static unsigned long u16(const unsigned char *p) { return p[0] | (unsigned long)p[1] << 8; }
static unsigned long u32(const unsigned char *p) { return u16(p) | u16(p + 2) << 16; }

/* The data of member NAME.npy, after its .npy header; descr gets the header's dtype ('<f4', ...). */
static const unsigned char *npy(const char *name, char *descr, unsigned long long *nbytes) {
    char want[256];
    snprintf(want, sizeof want, "%s.npy", name);
    for (long long at = 0; at + 30 <= zip_len && u32(zip + at) == 0x04034b50;) {  /* "PK\3\4" */
        const unsigned char *h = zip + at, *extra = h + 30 + u16(h + 26), *data = extra + u16(h + 28);
        unsigned long long size = u32(h + 18), nlen = u16(h + 26);  /* zip64 extra: id, len, usize, csize */
        if (size == 0xFFFFFFFFull) size = u32(extra + 12) | (unsigned long long)u32(extra + 16) << 32;
        if (nlen == strlen(want) && !memcmp(h + 30, want, nlen)) {
            if (u16(h + 8) != 0) die("compressed member (use np.savez, not savez_compressed):", want);
            unsigned long start = data[6] == 1 ? 10 : 12;  /* .npy version 1: 2-byte header length, else 4 */
            unsigned long skip = start + (start == 10 ? u16(data + 8) : u32(data + 8));
            const char *d = strstr((const char *)data + start, "'descr': '");  /* header text: no NUL */
            if (!d || sscanf(d + 10, "%7[^']", descr) != 1) die("no dtype in", want);
            *nbytes = size - skip;
            return data + skip;
        }
        at = (long long)(data - zip) + (long long)size;
    }
    die("no member", want);
    return NULL;
}

/* Array member NAME of COUNT values, converted to double. */
static const double *array(const char *name, unsigned long count) {
    char descr[8];
    unsigned long long nbytes;
    const unsigned char *p = npy(name, descr, &nbytes);
    int f4 = !strcmp(descr, "<f4");
    if ((!f4 && strcmp(descr, "<f8")) || nbytes != count * (f4 ? 4 : 8)) die("unexpected dtype or size:", name);
    double *a = malloc(count * sizeof *a), d;
    float f;
    for (unsigned long i = 0; i < count; i++)
        a[i] = f4 ? (memcpy(&f, p + 4 * i, 4), f) : (memcpy(&d, p + 8 * i, 8), d);
    return a;
}

/* The value of the next "key" after *p in the JSON text: a string (without its quotes) or a bare word. */
static char *field(const char **p, const char *key) {
    static char out[128];
    char pattern[64];
    int n = snprintf(pattern, sizeof pattern, "\"%s\"", key);
    const char *at = strstr(*p, pattern);
    if (!at) die("model.json lacks", key);
    at += n + strspn(at + n, " :\t\n\"");
    size_t len = strcspn(at, "\",}]");
    snprintf(out, sizeof out, "%.*s", (int)(len < 127 ? len : 127), at);
    *p = at + len;
    return out;
}

static double act(const char *name, double z, double slope) {
    if (!strcmp(name, "relu")) return z < 0 ? 0 : z;  /* written so that NaN passes, as in tinydae */
    if (!strcmp(name, "leaky_relu")) return z < 0 ? slope * z : z;
    if (!strcmp(name, "tanh")) return tanh(z);
    if (!strcmp(name, "sigmoid")) return 1 / (1 + exp(-z));
    if (!strcmp(name, "softplus")) return (z < 0 ? 0 : z) + log1p(exp(-fabs(z)));
    if (!strcmp(name, "silu")) return z / (1 + exp(-z));
    if (strcmp(name, "identity")) die("unknown activation", name);
    return z;
}

int main(int argc, char **argv) {
    if (argc < 2) die("usage: dae MODEL.npz [ROWS.txt]", "");
    FILE *f = fopen(argv[1], "rb"), *in = argc > 2 ? fopen(argv[2], "r") : stdin;
    if (!f || !in) die("cannot open", f ? argv[2] : argv[1]);
    fseek(f, 0, SEEK_END);
    zip = malloc(zip_len = ftell(f));
    rewind(f);
    if (fread(zip, 1, zip_len, f) != (size_t)zip_len) die("cannot read", argv[1]);
    char descr[8], W[64], b[64];
    unsigned long long len;
    const unsigned char *text = npy("model.json", descr, &len);
    char *json = calloc(len + 1, 1);
    const char *p = memcpy(json, text, len);
    if (strcmp(field(&p, "format"), "tinydae-npz") || strcmp(field(&p, "format_version"), "1"))
        die("not a tinydae-npz file of format version 1:", argv[1]);
    double slope = atof(field(&p, "leaky_slope"));
    Layer L[64];  /* 2k layers: k <= 32 hidden widths */
    int n = 0, width = 0;
    for (p = strstr(json, "\"layers\""); p && strstr(p, "\"W\""); n++) {
        if (n == 64) die("more than 64 layers in", argv[1]);
        snprintf(W, sizeof W, "%s", field(&p, "W"));
        L[n].transposed = !strcmp(field(&p, "transposed"), "true");
        snprintf(b, sizeof b, "%s", field(&p, "b"));
        L[n].fan_in = atoi(field(&p, "fan_in"));
        L[n].fan_out = atoi(field(&p, "fan_out"));
        snprintf(L[n].act, sizeof L[n].act, "%s", field(&p, "activation"));
        L[n].W = array(W, (unsigned long)L[n].fan_in * L[n].fan_out);  /* transposed: fan_out x fan_in */
        L[n].b = array(b, L[n].fan_out);
        if (L[n].fan_in > width) width = L[n].fan_in;
    }
    if (n == 0) die("no layers in", argv[1]);
    int D = L[0].fan_in;
    double *x = malloc(width * sizeof *x), *y = malloc(width * sizeof *y), *t;
    while (fscanf(in, "%lf", &x[0]) == 1) {
        for (int i = 1; i < D; i++)
            if (fscanf(in, "%lf", &x[i]) != 1) die("a row has fewer values than the input width", "");
        for (const Layer *c = L; c < L + n; c++) {
            for (int o = 0; o < c->fan_out; o++) {  /* y = act(x @ W + b) */
                double z = c->b[o];
                for (int i = 0; i < c->fan_in; i++)
                    z += x[i] * (c->transposed ? c->W[(long)o * c->fan_in + i] : c->W[(long)i * c->fan_out + o]);
                y[o] = act(c->act, z, slope);
            }
            t = x, x = y, y = t;
        }
        for (int o = 0; o < D; o++) printf(o + 1 < D ? "%.9g " : "%.9g\n", act("sigmoid", x[o], slope));
    }
    return 0;
}
