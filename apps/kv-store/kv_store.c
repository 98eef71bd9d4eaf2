/*
 * kv-store: a Calimero application written in freestanding C.
 *
 * It behaves like a kv-store built with the Calimero Rust SDK (JSON args read
 * through `input`, JSON results through `value_return`, logs, events, SDK-style
 * panics, one `commit` per mutating call) and keeps its state as a CRDT so that
 * nodes exchanging artifacts converge: every key is a last-writer-wins register
 * whose writes carry (timestamp, writer id) and whose deletions are tombstones.
 * The storage layout, the ordering rule and the artifact encoding are described
 * in README.md next to this file.
 *
 * No libc: a bump allocator over __heap_base, a JSON reader/writer and SHA-256
 * are all below. Each call runs in a fresh instance, so memory is never freed.
 */

typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned long usize; /* 32 bits on wasm32 */

#define NULL ((void *)0)
#define U64_MAX 0xFFFFFFFFFFFFFFFFull
#define DATA_REGISTER 0xFFFFFFFEull

#define IMPORT(name) __attribute__((import_module("env"), import_name(name)))
#define EXPORT(name) __attribute__((export_name(name)))

/* ---- host ABI: every pointer, length and register id is a u64 ---------- */

typedef struct { u64 ptr; u64 len; } Buffer;
typedef struct { Buffer file; u32 line; u32 column; } Location;
typedef struct { Buffer kind; Buffer data; } EventDesc;
typedef struct { u64 discriminant; Buffer payload; } ValueReturn;

IMPORT("input") void env_input(u64 register_id);
IMPORT("register_len") u64 env_register_len(u64 register_id);
IMPORT("read_register") u32 env_read_register(u64 register_id, u64 buf);
IMPORT("value_return") void env_value_return(u64 value);
IMPORT("log_utf8") void env_log_utf8(u64 buf);
IMPORT("panic_utf8") void env_panic_utf8(u64 msg, u64 location);
IMPORT("emit") void env_emit(u64 event);
IMPORT("executor_id") void env_executor_id(u64 register_id);
IMPORT("commit") void env_commit(u64 root, u64 artifact);
IMPORT("storage_read") u32 env_storage_read(u64 key, u64 register_id);
IMPORT("storage_write") u32 env_storage_write(u64 key, u64 value, u64 register_id);
IMPORT("time_now") void env_time_now(u64 buf);

static u64 addr(const void *p) { return (u64)(usize)p; }

static usize cstr_len(const char *s) {
    usize n = 0;
    while (s[n]) n++;
    return n;
}

__attribute__((noreturn)) static void panic_at(const u8 *msg, usize len, const char *file,
                                               u32 line, u32 column) {
    Buffer m = {addr(msg), len};
    Location loc = {{addr(file), cstr_len(file)}, line, column};
    env_panic_utf8(addr(&m), addr(&loc));
    __builtin_trap(); /* the host never returns from panic_utf8 */
}

/* Like Rust's panic!: the location is where the macro is written (clang reports
 * the column where the PANIC(...) invocation ends, Rust where it starts). */
#define PANIC(msg) panic_at((const u8 *)(msg), sizeof(msg) - 1, __FILE__, __LINE__, __builtin_COLUMN())
#define PANIC_BUF(b) panic_at((b).p, (b).len, __FILE__, __LINE__, __builtin_COLUMN())

/* ---- memory --------------------------------------------------------------- */

extern u8 __heap_base;
static usize heap_top;

static void *alloc(usize n) {
    if (!heap_top) heap_top = (usize)&__heap_base;
    if (n > 0x40000000u) PANIC("out of memory: allocation too large");
    usize start = (heap_top + 7u) & ~(usize)7u;
    usize end = start + n;
    usize have = __builtin_wasm_memory_size(0) * 65536u;
    if (end > have) {
        usize pages = (end - have + 65535u) / 65536u;
        if (__builtin_wasm_memory_grow(0, pages) == (usize)-1) PANIC("out of memory");
    }
    heap_top = end;
    return (void *)start;
}

static int mem_cmp(const u8 *a, const u8 *b, usize n) {
    for (usize i = 0; i < n; i++)
        if (a[i] != b[i]) return a[i] < b[i] ? -1 : 1;
    return 0;
}

/* Byte strings compare like Rust's `[u8]`: bytewise, then shorter first. */
static int bytes_cmp(const u8 *a, usize alen, const u8 *b, usize blen) {
    int c = mem_cmp(a, b, alen < blen ? alen : blen);
    if (c) return c;
    return alen < blen ? -1 : (alen > blen ? 1 : 0);
}

/* A growable byte buffer. */
typedef struct { u8 *p; usize len; usize cap; } Buf;

static void buf_reserve(Buf *b, usize extra) {
    if (b->len + extra <= b->cap) return;
    usize cap = b->cap * 2 + extra + 64;
    /* Growing the most recent allocation can happen in place. */
    if (b->p && (usize)(b->p + b->cap) == heap_top) {
        alloc(cap - b->cap);
        heap_top = (usize)b->p + cap;
        b->cap = cap;
        return;
    }
    u8 *p = alloc(cap);
    if (b->len) __builtin_memcpy(p, b->p, b->len);
    b->p = p;
    b->cap = cap;
}

static void buf_put(Buf *b, const void *data, usize n) {
    buf_reserve(b, n);
    if (n) __builtin_memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void buf_byte(Buf *b, u8 c) {
    buf_reserve(b, 1);
    b->p[b->len++] = c;
}

static void buf_str(Buf *b, const char *s) { buf_put(b, s, cstr_len(s)); }

static void buf_u32(Buf *b, u32 v) {
    u8 t[4] = {(u8)v, (u8)(v >> 8), (u8)(v >> 16), (u8)(v >> 24)};
    buf_put(b, t, 4);
}

static void buf_u64(Buf *b, u64 v) {
    for (int i = 0; i < 8; i++) buf_byte(b, (u8)(v >> (8 * i)));
}

static void buf_dec(Buf *b, u64 v) {
    char t[20];
    int n = 0;
    do { t[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) buf_byte(b, (u8)t[--n]);
}

static u32 get_u32(const u8 *p) { return p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24; }

static u64 get_u64(const u8 *p) {
    u64 v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* A bounds-checked reader over bytes that came from storage or a peer. */
typedef struct { const u8 *p; usize len; usize pos; int bad; } Reader;

static const u8 *rd_take(Reader *r, usize n) {
    if (r->bad || n > r->len - r->pos) { r->bad = 1; return NULL; }
    const u8 *p = r->p + r->pos;
    r->pos += n;
    return p;
}

static u8 rd_u8(Reader *r) { const u8 *p = rd_take(r, 1); return p ? *p : 0; }
static u32 rd_u32(Reader *r) { const u8 *p = rd_take(r, 4); return p ? get_u32(p) : 0; }
static u64 rd_u64(Reader *r) { const u8 *p = rd_take(r, 8); return p ? get_u64(p) : 0; }

/* ---- SHA-256 (FIPS 180-4) ------------------------------------------------- */

typedef struct { u32 h[8]; u8 block[64]; usize fill; u64 total; } Sha256;

static const u32 SHA_K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static u32 rotr(u32 x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha_compress(Sha256 *s, const u8 *blk) {
    u32 w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (u32)blk[4 * i] << 24 | (u32)blk[4 * i + 1] << 16 | (u32)blk[4 * i + 2] << 8 | blk[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        u32 s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        u32 s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    u32 a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3];
    u32 e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
    for (int i = 0; i < 64; i++) {
        u32 t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + SHA_K[i] + w[i];
        u32 t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1;
        d = c; c = b; b = a; a = t1 + t2;
    }
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d;
    s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}

static void sha_init(Sha256 *s) {
    static const u32 iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                              0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    for (int i = 0; i < 8; i++) s->h[i] = iv[i];
    s->fill = 0;
    s->total = 0;
}

static void sha_update(Sha256 *s, const u8 *p, usize n) {
    s->total += n;
    while (n) {
        usize take = 64 - s->fill;
        if (take > n) take = n;
        __builtin_memcpy(s->block + s->fill, p, take);
        s->fill += take;
        p += take;
        n -= take;
        if (s->fill == 64) { sha_compress(s, s->block); s->fill = 0; }
    }
}

static void sha_u32(Sha256 *s, u32 v) {
    u8 t[4] = {(u8)v, (u8)(v >> 8), (u8)(v >> 16), (u8)(v >> 24)};
    sha_update(s, t, 4);
}

static void sha_final(Sha256 *s, u8 out[32]) {
    u64 bits = s->total * 8;
    u8 pad = 0x80;
    sha_update(s, &pad, 1);
    u8 zero = 0;
    while (s->fill != 56) sha_update(s, &zero, 1);
    u8 len[8];
    for (int i = 0; i < 8; i++) len[i] = (u8)(bits >> (56 - 8 * i));
    sha_update(s, len, 8);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (u8)(s->h[i] >> 24); out[4 * i + 1] = (u8)(s->h[i] >> 16);
        out[4 * i + 2] = (u8)(s->h[i] >> 8); out[4 * i + 3] = (u8)s->h[i];
    }
}

/* ---- host helpers --------------------------------------------------------- */

static Buf read_register(u64 reg) {
    u64 n = env_register_len(reg);
    if (n == U64_MAX) PANIC("register is unexpectedly empty");
    Buf b = {alloc((usize)n), (usize)n, (usize)n};
    Buffer d = {addr(b.p), n};
    if (!env_read_register(reg, addr(&d))) PANIC("register length changed while reading it");
    return b;
}

static Buf read_input(void) {
    env_input(DATA_REGISTER);
    return read_register(DATA_REGISTER);
}

static void log_buf(const Buf *b) {
    Buffer d = {addr(b->p), b->len};
    env_log_utf8(addr(&d));
}

static void emit_event(const char *kind, const Buf *data) {
    EventDesc e = {{addr(kind), cstr_len(kind)}, {addr(data->p), data->len}};
    env_emit(addr(&e));
}

static void return_json(u64 discriminant, const Buf *json) {
    ValueReturn v = {discriminant, {addr(json->p), json->len}};
    env_value_return(addr(&v));
}

static void return_literal(const char *json) {
    Buf b = {(u8 *)json, cstr_len(json), 0};
    return_json(0, &b);
}

static int storage_get(const Buf *key, Buf *out) {
    Buffer k = {addr(key->p), key->len};
    if (!env_storage_read(addr(&k), DATA_REGISTER)) return 0;
    *out = read_register(DATA_REGISTER);
    return 1;
}

static void storage_put(const Buf *key, const Buf *value) {
    Buffer k = {addr(key->p), key->len};
    Buffer v = {addr(value->p), value->len};
    /* The old value lands in the register; nobody reads it. */
    env_storage_write(addr(&k), addr(&v), DATA_REGISTER);
}

static u64 time_now(void) {
    u64 t = 0;
    Buffer d = {addr(&t), 8};
    env_time_now(addr(&d));
    return t; /* wasm is little-endian, as is the host's encoding */
}

/* ---- JSON ----------------------------------------------------------------- */

/* Serialise bytes (valid UTF-8) as a JSON string the way serde_json does. */
static void json_string(Buf *out, const u8 *s, usize n) {
    static const char hex[] = "0123456789abcdef";
    buf_byte(out, '"');
    for (usize i = 0; i < n; i++) {
        u8 c = s[i];
        switch (c) {
        case '"': buf_str(out, "\\\""); break;
        case '\\': buf_str(out, "\\\\"); break;
        case '\n': buf_str(out, "\\n"); break;
        case '\r': buf_str(out, "\\r"); break;
        case '\t': buf_str(out, "\\t"); break;
        case '\b': buf_str(out, "\\b"); break;
        case '\f': buf_str(out, "\\f"); break;
        default:
            if (c < 0x20) {
                buf_str(out, "\\u00");
                buf_byte(out, (u8)hex[c >> 4]);
                buf_byte(out, (u8)hex[c & 15]);
            } else {
                buf_byte(out, c);
            }
        }
    }
    buf_byte(out, '"');
}

/* Format a string the way Rust's `{:?}` does for ASCII control characters. */
static void debug_string(Buf *out, const u8 *s, usize n) {
    static const char hex[] = "0123456789abcdef";
    buf_byte(out, '"');
    for (usize i = 0; i < n; i++) {
        u8 c = s[i];
        if (c == '"') buf_str(out, "\\\"");
        else if (c == '\\') buf_str(out, "\\\\");
        else if (c == '\n') buf_str(out, "\\n");
        else if (c == '\r') buf_str(out, "\\r");
        else if (c == '\t') buf_str(out, "\\t");
        else if (c == 0) buf_str(out, "\\0");
        else if (c < 0x20 || c == 0x7f) {
            buf_str(out, "\\u{");
            if (c >> 4) buf_byte(out, (u8)hex[c >> 4]);
            buf_byte(out, (u8)hex[c & 15]);
            buf_byte(out, '}');
        } else buf_byte(out, c);
    }
    buf_byte(out, '"');
}

typedef struct { const u8 *s; usize len; usize pos; } Json;

/* Panic like the SDK does when serde_json rejects the arguments. */
__attribute__((noreturn)) static void json_fail(const Json *j, const char *what, const Buf *detail) {
    Buf m = {0};
    buf_str(&m, "Failed to deserialize input from JSON: ");
    buf_str(&m, what);
    if (detail) buf_put(&m, detail->p, detail->len);
    usize line = 1, column = 0;
    for (usize i = 0; i < j->pos && i < j->len; i++) {
        if (j->s[i] == '\n') { line++; column = 0; } else column++;
    }
    buf_str(&m, " at line ");
    buf_dec(&m, line);
    buf_str(&m, " column ");
    buf_dec(&m, column);
    PANIC_BUF(m);
}

static int is_ws(u8 c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

static void json_ws(Json *j) {
    while (j->pos < j->len && is_ws(j->s[j->pos])) j->pos++;
}

static int json_peek(Json *j) {
    json_ws(j);
    return j->pos < j->len ? j->s[j->pos] : -1;
}

static int utf8_valid(const u8 *s, usize n) {
    usize i = 0;
    while (i < n) {
        u8 c = s[i];
        usize extra;
        u32 cp, min;
        if (c < 0x80) { i++; continue; }
        if ((c & 0xE0) == 0xC0) { extra = 1; cp = c & 0x1F; min = 0x80; }
        else if ((c & 0xF0) == 0xE0) { extra = 2; cp = c & 0x0F; min = 0x800; }
        else if ((c & 0xF8) == 0xF0) { extra = 3; cp = c & 0x07; min = 0x10000; }
        else return 0;
        if (extra > n - i - 1) return 0;
        for (usize k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += extra + 1;
    }
    return 1;
}

static void put_utf8(Buf *out, u32 cp) {
    if (cp < 0x80) buf_byte(out, (u8)cp);
    else if (cp < 0x800) { buf_byte(out, (u8)(0xC0 | cp >> 6)); buf_byte(out, (u8)(0x80 | (cp & 0x3F))); }
    else if (cp < 0x10000) {
        buf_byte(out, (u8)(0xE0 | cp >> 12)); buf_byte(out, (u8)(0x80 | (cp >> 6 & 0x3F)));
        buf_byte(out, (u8)(0x80 | (cp & 0x3F)));
    } else {
        buf_byte(out, (u8)(0xF0 | cp >> 18)); buf_byte(out, (u8)(0x80 | (cp >> 12 & 0x3F)));
        buf_byte(out, (u8)(0x80 | (cp >> 6 & 0x3F))); buf_byte(out, (u8)(0x80 | (cp & 0x3F)));
    }
}

static u32 json_hex4(Json *j) {
    u32 v = 0;
    for (int i = 0; i < 4; i++) {
        if (j->pos >= j->len) json_fail(j, "EOF while parsing a string", NULL);
        u8 c = j->s[j->pos++];
        u32 d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else json_fail(j, "invalid escape", NULL);
        v = v << 4 | d;
    }
    return v;
}

/* Parse a JSON string at j->pos (which is at the opening quote) into `out`. */
static void json_parse_string(Json *j, Buf *out) {
    j->pos++; /* opening quote */
    for (;;) {
        if (j->pos >= j->len) json_fail(j, "EOF while parsing a string", NULL);
        u8 c = j->s[j->pos++];
        if (c == '"') return;
        if (c < 0x20) json_fail(j, "control character (\\u0000-\\u001F) found while parsing a string", NULL);
        if (c != '\\') { buf_byte(out, c); continue; }
        if (j->pos >= j->len) json_fail(j, "EOF while parsing a string", NULL);
        c = j->s[j->pos++];
        switch (c) {
        case '"': buf_byte(out, '"'); break;
        case '\\': buf_byte(out, '\\'); break;
        case '/': buf_byte(out, '/'); break;
        case 'b': buf_byte(out, '\b'); break;
        case 'f': buf_byte(out, '\f'); break;
        case 'n': buf_byte(out, '\n'); break;
        case 'r': buf_byte(out, '\r'); break;
        case 't': buf_byte(out, '\t'); break;
        case 'u': {
            u32 cp = json_hex4(j);
            if (cp >= 0xDC00 && cp <= 0xDFFF) json_fail(j, "lone trailing surrogate in hex escape", NULL);
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                /* A high surrogate must be followed by an escaped low one. */
                if (j->pos + 1 >= j->len || j->s[j->pos] != '\\' || j->s[j->pos + 1] != 'u')
                    json_fail(j, "unexpected end of hex escape", NULL);
                j->pos += 2;
                u32 lo = json_hex4(j);
                if (lo < 0xDC00 || lo > 0xDFFF) json_fail(j, "lone leading surrogate in hex escape", NULL);
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            put_utf8(out, cp);
            break;
        }
        default:
            json_fail(j, "invalid escape", NULL);
        }
    }
}

static void json_expect_literal(Json *j, const char *lit) {
    usize n = cstr_len(lit);
    if (j->len - j->pos < n || mem_cmp(j->s + j->pos, (const u8 *)lit, n))
        json_fail(j, "expected value", NULL);
    j->pos += n;
}

static int is_digit(int c) { return c >= '0' && c <= '9'; }

/* Skip a number; return 1 when it has a fraction or exponent. */
static int json_skip_number(Json *j) {
    int is_float = 0;
    if (j->pos < j->len && j->s[j->pos] == '-') j->pos++;
    if (j->pos >= j->len || !is_digit(j->s[j->pos])) json_fail(j, "invalid number", NULL);
    if (j->s[j->pos] == '0') j->pos++;
    else while (j->pos < j->len && is_digit(j->s[j->pos])) j->pos++;
    if (j->pos < j->len && j->s[j->pos] == '.') {
        is_float = 1;
        j->pos++;
        if (j->pos >= j->len || !is_digit(j->s[j->pos])) json_fail(j, "invalid number", NULL);
        while (j->pos < j->len && is_digit(j->s[j->pos])) j->pos++;
    }
    if (j->pos < j->len && (j->s[j->pos] == 'e' || j->s[j->pos] == 'E')) {
        is_float = 1;
        j->pos++;
        if (j->pos < j->len && (j->s[j->pos] == '+' || j->s[j->pos] == '-')) j->pos++;
        if (j->pos >= j->len || !is_digit(j->s[j->pos])) json_fail(j, "invalid number", NULL);
        while (j->pos < j->len && is_digit(j->s[j->pos])) j->pos++;
    }
    return is_float;
}

static void json_skip_value(Json *j, int depth);

static void json_skip_container(Json *j, int depth, u8 close) {
    if (depth > 128) json_fail(j, "recursion limit exceeded", NULL);
    j->pos++;
    if (json_peek(j) == close) { j->pos++; return; }
    for (;;) {
        if (close == '}') {
            if (json_peek(j) != '"') json_fail(j, "key must be a string", NULL);
            Buf ignored = {0};
            json_parse_string(j, &ignored);
            if (json_peek(j) != ':') json_fail(j, "expected `:`", NULL);
            j->pos++;
        }
        json_skip_value(j, depth + 1);
        int c = json_peek(j);
        if (c == close) { j->pos++; return; }
        if (c != ',') json_fail(j, close == '}' ? "expected `,` or `}`" : "expected `,` or `]`", NULL);
        j->pos++;
        if (json_peek(j) == close) json_fail(j, "trailing comma", NULL);
    }
}

static void json_skip_value(Json *j, int depth) {
    int c = json_peek(j);
    if (c < 0) json_fail(j, "EOF while parsing a value", NULL);
    if (c == '"') { Buf ignored = {0}; json_parse_string(j, &ignored); }
    else if (c == '{') json_skip_container(j, depth, '}');
    else if (c == '[') json_skip_container(j, depth, ']');
    else if (c == 't') json_expect_literal(j, "true");
    else if (c == 'f') json_expect_literal(j, "false");
    else if (c == 'n') json_expect_literal(j, "null");
    else if (c == '-' || is_digit(c)) json_skip_number(j);
    else json_fail(j, "expected value", NULL);
}

/* serde's wording for a value of the wrong type, e.g. "integer `1`". */
static void json_describe_value(Json *j, Buf *out) {
    int c = json_peek(j);
    usize start = j->pos;
    if (c == '{') { json_skip_value(j, 0); buf_str(out, "map"); }
    else if (c == '[') { json_skip_value(j, 0); buf_str(out, "sequence"); }
    else if (c == 'n') { json_skip_value(j, 0); buf_str(out, "null"); }
    else if (c == 't' || c == 'f') {
        json_skip_value(j, 0);
        buf_str(out, "boolean `");
        buf_put(out, j->s + start, j->pos - start);
        buf_byte(out, '`');
    } else if (c == '-' || is_digit(c)) {
        int is_float = json_skip_number(j);
        buf_str(out, is_float ? "floating point `" : "integer `");
        buf_put(out, j->s + start, j->pos - start);
        buf_byte(out, '`');
    } else json_skip_value(j, 0); /* fails with the syntax error */
}

/*
 * Deserialise a JSON object of named string arguments, like the SDK's
 * generated input struct: every field required, unknown fields ignored,
 * duplicates and trailing garbage rejected.
 */
static void parse_args(const Buf *input, const char *const *names, Buf *values, int count) {
    Json j = {input->p, input->len, 0};
    int seen[4] = {0, 0, 0, 0};
    if (!utf8_valid(input->p, input->len)) json_fail(&j, "invalid unicode code point", NULL);
    int c = json_peek(&j);
    if (c < 0) json_fail(&j, "EOF while parsing a value", NULL);
    if (c != '{') {
        Buf d = {0};
        json_describe_value(&j, &d);
        buf_str(&d, ", expected a map of named arguments");
        json_fail(&j, "invalid type: ", &d);
    }
    j.pos++;
    if (json_peek(&j) == '}') j.pos++;
    else for (;;) {
        if (json_peek(&j) != '"') json_fail(&j, "key must be a string", NULL);
        Buf key = {0};
        json_parse_string(&j, &key);
        if (json_peek(&j) != ':') json_fail(&j, "expected `:`", NULL);
        j.pos++;
        int which = -1;
        for (int i = 0; i < count; i++)
            if (!bytes_cmp(key.p, key.len, (const u8 *)names[i], cstr_len(names[i]))) which = i;
        if (which < 0) {
            json_skip_value(&j, 0);
        } else {
            if (seen[which]) {
                Buf d = {0};
                buf_put(&d, names[which], cstr_len(names[which]));
                buf_byte(&d, '`');
                json_fail(&j, "duplicate field `", &d);
            }
            if (json_peek(&j) != '"') {
                Buf d = {0};
                json_describe_value(&j, &d);
                buf_str(&d, ", expected a string");
                json_fail(&j, "invalid type: ", &d);
            }
            values[which] = (Buf){0};
            json_parse_string(&j, &values[which]);
            seen[which] = 1;
        }
        c = json_peek(&j);
        if (c == '}') { j.pos++; break; }
        if (c != ',') json_fail(&j, "expected `,` or `}`", NULL);
        j.pos++;
        if (json_peek(&j) == '}') json_fail(&j, "trailing comma", NULL);
    }
    for (int i = 0; i < count; i++) {
        if (!seen[i]) {
            Buf d = {0};
            buf_put(&d, names[i], cstr_len(names[i]));
            buf_byte(&d, '`');
            json_fail(&j, "missing field `", &d);
        }
    }
    if (json_peek(&j) >= 0) json_fail(&j, "trailing characters", NULL);
}

static Buf arg_key(void) {
    static const char *const names[] = {"key"};
    Buf input = read_input();
    Buf values[1];
    parse_args(&input, names, values, 1);
    return values[0];
}

/* ---- state ---------------------------------------------------------------- */

/*
 * Storage keys (the host store is a flat map with no iteration, so the app
 * keeps its own sorted index of every key it has seen, tombstones included).
 */
#define META_KEY "kv-store/v1/meta"
#define INDEX_KEY "kv-store/v1/index"
#define ENTRY_PREFIX "kv-store/v1/entry/"
#define ROOT_DOMAIN "calimero-workflow/kv-store/v1/root"

/* One LWW register; `value` is empty for a tombstone. */
typedef struct {
    u8 live;
    u64 ts;
    u8 writer[32];
    const u8 *value;
    usize vlen;
} Record;

typedef struct {
    const u8 *key;
    usize klen;
    u8 live;
    u8 hash[32]; /* sha256 of the key and its encoded record */
} IndexEntry;

typedef struct {
    int loaded;
    u32 live_count;
    IndexEntry *entries;
    usize count;
    usize cap;
    int dirty;
} State;

static void encode_record(Buf *out, const Record *r) {
    buf_byte(out, r->live);
    buf_u64(out, r->ts);
    buf_put(out, r->writer, 32);
    buf_u32(out, (u32)r->vlen);
    buf_put(out, r->value, r->vlen);
}

static int decode_record(const u8 *p, usize n, Record *r) {
    Reader rd = {p, n, 0, 0};
    r->live = rd_u8(&rd);
    r->ts = rd_u64(&rd);
    const u8 *w = rd_take(&rd, 32);
    r->vlen = rd_u32(&rd);
    r->value = rd_take(&rd, r->vlen);
    if (rd.bad || rd.pos != n || r->live > 1 || (!r->live && r->vlen)) return 0;
    __builtin_memcpy(r->writer, w, 32);
    return 1;
}

/* The total order that decides which write wins; both sides compute it alike. */
static int record_cmp(const Record *a, const Record *b) {
    if (a->ts != b->ts) return a->ts < b->ts ? -1 : 1;
    int c = mem_cmp(a->writer, b->writer, 32);
    if (c) return c;
    if (a->live != b->live) return a->live < b->live ? -1 : 1;
    return bytes_cmp(a->value, a->vlen, b->value, b->vlen);
}

static void entry_hash(const u8 *key, usize klen, const Record *r, u8 out[32]) {
    Buf enc = {0};
    encode_record(&enc, r);
    Sha256 s;
    sha_init(&s);
    sha_u32(&s, (u32)klen);
    sha_update(&s, key, klen);
    sha_update(&s, enc.p, enc.len);
    sha_final(&s, out);
}

static Buf entry_key(const u8 *key, usize klen) {
    Buf k = {0};
    buf_str(&k, ENTRY_PREFIX);
    buf_put(&k, key, klen);
    return k;
}

static Buf literal_key(const char *s) {
    Buf k = {(u8 *)s, cstr_len(s), 0};
    return k;
}

/* Load meta and index; return 0 when the app was never initialised. */
static int state_load(State *st, int with_index) {
    Buf meta_key = literal_key(META_KEY), meta;
    if (!storage_get(&meta_key, &meta)) return 0;
    Reader rd = {meta.p, meta.len, 0, 0};
    u8 version = rd_u8(&rd);
    st->live_count = rd_u32(&rd);
    if (rd.bad || version != 1) PANIC("Failed to find or read app state");
    st->loaded = 1;
    if (!with_index) return 1;

    Buf index_key = literal_key(INDEX_KEY), index;
    if (!storage_get(&index_key, &index)) PANIC("Failed to find or read app state");
    Reader ir = {index.p, index.len, 0, 0};
    u32 n = rd_u32(&ir);
    if (ir.bad || n > index.len / 37) PANIC("Failed to find or read app state");
    st->cap = n + 8;
    st->entries = alloc(st->cap * sizeof(IndexEntry));
    for (u32 i = 0; i < n; i++) {
        IndexEntry *e = &st->entries[i];
        e->klen = rd_u32(&ir);
        e->key = rd_take(&ir, e->klen);
        e->live = rd_u8(&ir);
        const u8 *h = rd_take(&ir, 32);
        if (ir.bad) PANIC("Failed to find or read app state");
        __builtin_memcpy(e->hash, h, 32);
    }
    st->count = n;
    return 1;
}

static void state_require(State *st, int with_index) {
    if (!state_load(st, with_index)) PANIC("Failed to find or read app state");
}

/* Binary search; returns the slot where `key` is or would be inserted. */
static usize index_find(const State *st, const u8 *key, usize klen, int *found) {
    usize lo = 0, hi = st->count;
    while (lo < hi) {
        usize mid = lo + (hi - lo) / 2;
        int c = bytes_cmp(st->entries[mid].key, st->entries[mid].klen, key, klen);
        if (c == 0) { *found = 1; return mid; }
        if (c < 0) lo = mid + 1; else hi = mid;
    }
    *found = 0;
    return lo;
}

static int record_load(const u8 *key, usize klen, Record *r) {
    Buf k = entry_key(key, klen), v;
    if (!storage_get(&k, &v)) return 0;
    if (!decode_record(v.p, v.len, r)) PANIC("Failed to find or read app state");
    return 1;
}

/*
 * Merge `incoming` into the register for `key` under last-writer-wins.
 * Returns 1 when it won (and was stored), 0 when the stored record is newer
 * or identical, which is what makes re-applying an artifact harmless.
 */
static int state_merge(State *st, const u8 *key, usize klen, const Record *incoming) {
    Record current;
    int exists = record_load(key, klen, &current);
    if (exists && record_cmp(incoming, &current) <= 0) return 0;

    Buf enc = {0};
    encode_record(&enc, incoming);
    Buf k = entry_key(key, klen);
    storage_put(&k, &enc);

    int found;
    usize at = index_find(st, key, klen, &found);
    if (!found) {
        if (st->count == st->cap) {
            usize cap = st->cap * 2 + 8;
            IndexEntry *grown = alloc(cap * sizeof(IndexEntry));
            if (st->count) __builtin_memcpy(grown, st->entries, st->count * sizeof(IndexEntry));
            st->entries = grown;
            st->cap = cap;
        }
        for (usize i = st->count; i > at; i--) st->entries[i] = st->entries[i - 1];
        st->count++;
        u8 *copy = alloc(klen);
        if (klen) __builtin_memcpy(copy, key, klen);
        st->entries[at].key = copy;
        st->entries[at].klen = klen;
        st->entries[at].live = 0;
    }
    IndexEntry *e = &st->entries[at];
    if (e->live && !incoming->live) st->live_count--;
    if (!e->live && incoming->live) st->live_count++;
    e->live = incoming->live;
    entry_hash(key, klen, incoming, e->hash);
    st->dirty = 1;
    return 1;
}

static void state_save(const State *st) {
    Buf meta = {0};
    buf_byte(&meta, 1);
    buf_u32(&meta, st->live_count);
    Buf meta_key = literal_key(META_KEY);
    storage_put(&meta_key, &meta);

    Buf index = {0};
    buf_u32(&index, (u32)st->count);
    for (usize i = 0; i < st->count; i++) {
        const IndexEntry *e = &st->entries[i];
        buf_u32(&index, (u32)e->klen);
        buf_put(&index, e->key, e->klen);
        buf_byte(&index, e->live);
        buf_put(&index, e->hash, 32);
    }
    Buf index_key = literal_key(INDEX_KEY);
    storage_put(&index_key, &index);
}

/* The root hash depends only on the set of (key, record) pairs. */
static void state_root(const State *st, u8 out[32]) {
    Sha256 s;
    sha_init(&s);
    sha_update(&s, (const u8 *)ROOT_DOMAIN, sizeof(ROOT_DOMAIN) - 1);
    sha_u32(&s, (u32)st->count);
    for (usize i = 0; i < st->count; i++) {
        sha_u32(&s, (u32)st->entries[i].klen);
        sha_update(&s, st->entries[i].key, st->entries[i].klen);
        sha_update(&s, st->entries[i].hash, 32);
    }
    sha_final(&s, out);
}

/* ---- artifacts -------------------------------------------------------------- */

#define ACTION_INIT 0
#define ACTION_PUT 1
#define ACTION_DELETE 2

typedef struct { Buf bytes; u32 count; } Artifact;

static void artifact_action(Artifact *a, const u8 *key, usize klen, const Record *r) {
    buf_byte(&a->bytes, r->live ? ACTION_PUT : ACTION_DELETE);
    buf_u32(&a->bytes, (u32)klen);
    buf_put(&a->bytes, key, klen);
    buf_u64(&a->bytes, r->ts);
    buf_put(&a->bytes, r->writer, 32);
    if (r->live) {
        buf_u32(&a->bytes, (u32)r->vlen);
        buf_put(&a->bytes, r->value, r->vlen);
    }
    a->count++;
}

/* Save state and report root + artifact (tag 0 = StorageDelta::Actions). */
static void commit_state(State *st, const Artifact *a) {
    state_save(st);
    u8 root[32];
    state_root(st, root);
    Buf framed = {0};
    if (a) {
        buf_byte(&framed, 0);
        buf_u32(&framed, a->count);
        buf_put(&framed, a->bytes.p, a->bytes.len);
    }
    Buffer r = {addr(root), 32};
    Buffer d = {addr(framed.p), framed.len};
    env_commit(addr(&r), addr(&d));
}

/* A local write: newer than anything this node has seen for the key. */
static Record local_record(const Record *current, int exists, int live, const Buf *value) {
    Record r;
    r.live = (u8)live;
    r.ts = time_now();
    /* Clocks drift between nodes; never let our own write lose to what we saw. */
    if (exists && current->ts >= r.ts) r.ts = current->ts + 1;
    env_executor_id(DATA_REGISTER);
    Buf id = read_register(DATA_REGISTER);
    __builtin_memset(r.writer, 0, 32);
    __builtin_memcpy(r.writer, id.p, id.len < 32 ? id.len : 32);
    r.value = live ? value->p : NULL;
    r.vlen = live ? value->len : 0;
    return r;
}

static void event_kv(const char *kind, const Buf *key, const Buf *value) {
    Buf data = {0};
    buf_str(&data, "{\"key\":");
    json_string(&data, key->p, key->len);
    if (value) {
        buf_str(&data, ",\"value\":");
        json_string(&data, value->p, value->len);
    }
    buf_byte(&data, '}');
    emit_event(kind, &data);
}

static void log_key(const char *prefix, const Buf *key) {
    Buf line = {0};
    buf_str(&line, prefix);
    debug_string(&line, key->p, key->len);
    log_buf(&line);
}

static void log_text(const char *text) {
    Buf line = literal_key(text);
    log_buf(&line);
}

/* ---- methods ---------------------------------------------------------------- */

EXPORT("init") void kv_init(void) {
    State st = {0};
    if (state_load(&st, 0)) PANIC("Cannot initialize over already existing state.");
    st.loaded = 1;
    Artifact a = {{0}, 0};
    buf_byte(&a.bytes, ACTION_INIT);
    a.count = 1;
    commit_state(&st, &a);
}

EXPORT("set") void kv_set(void) {
    static const char *const names[] = {"key", "value"};
    Buf input = read_input();
    Buf args[2];
    parse_args(&input, names, args, 2);
    State st = {0};
    state_require(&st, 1);

    Buf line = {0};
    buf_str(&line, "Setting key: ");
    debug_string(&line, args[0].p, args[0].len);
    buf_str(&line, " to value: ");
    debug_string(&line, args[1].p, args[1].len);
    log_buf(&line);

    Record current;
    int exists = record_load(args[0].p, args[0].len, &current);
    event_kv(exists && current.live ? "Updated" : "Inserted", &args[0], &args[1]);
    Record r = local_record(&current, exists, 1, &args[1]);
    Artifact a = {{0}, 0};
    if (state_merge(&st, args[0].p, args[0].len, &r)) artifact_action(&a, args[0].p, args[0].len, &r);
    return_literal("null");
    commit_state(&st, &a);
}

static int lookup(const Buf *key, Record *r) {
    return record_load(key->p, key->len, r) && r->live;
}

EXPORT("get") void kv_get(void) {
    Buf key = arg_key();
    State st = {0};
    state_require(&st, 0);
    log_key("Getting key: ", &key);
    Record r;
    if (!lookup(&key, &r)) { return_literal("null"); return; }
    Buf out = {0};
    json_string(&out, r.value, r.vlen);
    return_json(0, &out);
}

EXPORT("get_result") void kv_get_result(void) {
    Buf key = arg_key();
    State st = {0};
    state_require(&st, 0);
    log_key("Getting key, possibly failing: ", &key);
    Record r;
    Buf out = {0};
    if (!lookup(&key, &r)) {
        buf_str(&out, "{\"kind\":\"NotFound\",\"data\":");
        json_string(&out, key.p, key.len);
        buf_byte(&out, '}');
        return_json(1, &out);
        return;
    }
    json_string(&out, r.value, r.vlen);
    return_json(0, &out);
}

EXPORT("get_unchecked") void kv_get_unchecked(void) {
    Buf key = arg_key();
    State st = {0};
    state_require(&st, 0);
    log_key("Getting key without checking: ", &key);
    Record r;
    if (!lookup(&key, &r)) PANIC("key not found");
    Buf out = {0};
    json_string(&out, r.value, r.vlen);
    return_json(0, &out);
}

EXPORT("entries") void kv_entries(void) {
    State st = {0};
    state_require(&st, 1);
    log_text("Getting all entries");
    Buf out = {0};
    buf_byte(&out, '{');
    int first = 1;
    for (usize i = 0; i < st.count; i++) {
        const IndexEntry *e = &st.entries[i];
        Record r;
        if (!e->live || !record_load(e->key, e->klen, &r) || !r.live) continue;
        if (!first) buf_byte(&out, ',');
        first = 0;
        json_string(&out, e->key, e->klen);
        buf_byte(&out, ':');
        json_string(&out, r.value, r.vlen);
    }
    buf_byte(&out, '}');
    return_json(0, &out);
}

EXPORT("len") void kv_len(void) {
    State st = {0};
    state_require(&st, 0);
    log_text("Getting the number of entries");
    Buf out = {0};
    buf_dec(&out, st.live_count);
    return_json(0, &out);
}

/* Returns the removed value, or null when the key was absent. */
EXPORT("remove") void kv_remove(void) {
    Buf key = arg_key();
    State st = {0};
    state_require(&st, 1);
    log_key("Removing key: ", &key);
    event_kv("Removed", &key, NULL);

    Record current;
    int exists = record_load(key.p, key.len, &current);
    Buf out = {0};
    if (exists && current.live) json_string(&out, current.value, current.vlen);
    else buf_str(&out, "null");
    /* A tombstone even for an unseen key: a concurrent older set must lose. */
    Record r = local_record(&current, exists, 0, NULL);
    Artifact a = {{0}, 0};
    if (state_merge(&st, key.p, key.len, &r)) artifact_action(&a, key.p, key.len, &r);
    return_json(0, &out);
    commit_state(&st, &a);
}

EXPORT("clear") void kv_clear(void) {
    State st = {0};
    state_require(&st, 1);
    log_text("Clearing all entries");
    Buf null_data = literal_key("null");
    emit_event("Cleared", &null_data);
    Artifact a = {{0}, 0};
    /* Merging below may insert nothing new, so the slots stay stable. */
    usize n = st.count;
    for (usize i = 0; i < n; i++) {
        IndexEntry *e = &st.entries[i];
        if (!e->live) continue;
        Record current;
        int exists = record_load(e->key, e->klen, &current);
        Record r = local_record(&current, exists, 0, NULL);
        if (state_merge(&st, e->key, e->klen, &r)) artifact_action(&a, e->key, e->klen, &r);
    }
    return_literal("null");
    commit_state(&st, &a);
}

/* Nothing to register: merging is built into __calimero_sync_next. */
EXPORT("__calimero_register_merge") void kv_register_merge(void) {}

/*
 * Apply another node's artifact. Everything is decoded and checked before
 * anything is stored, and the host discards all writes when we panic.
 */
EXPORT("__calimero_sync_next") void kv_sync_next(void) {
    Buf input = read_input();
    Reader rd = {input.p, input.len, 0, 0};
    if (rd_u8(&rd) != 0) PANIC("fatal: sync failed");
    u32 count = rd_u32(&rd);
    /* Every action takes at least one byte, which bounds the allocation below. */
    if (rd.bad || count > input.len - rd.pos) PANIC("fatal: sync failed");

    typedef struct { const u8 *key; usize klen; Record r; } Action;
    Action *actions = alloc((usize)count * sizeof(Action) + 1);
    usize n = 0;
    for (u32 i = 0; i < count; i++) {
        u8 kind = rd_u8(&rd);
        if (kind == ACTION_INIT) continue;
        if (kind != ACTION_PUT && kind != ACTION_DELETE) PANIC("fatal: sync failed");
        Action *act = &actions[n++];
        act->klen = rd_u32(&rd);
        act->key = rd_take(&rd, act->klen);
        act->r.live = kind == ACTION_PUT;
        act->r.ts = rd_u64(&rd);
        const u8 *w = rd_take(&rd, 32);
        if (rd.bad) PANIC("fatal: sync failed");
        __builtin_memcpy(act->r.writer, w, 32);
        act->r.vlen = act->r.live ? rd_u32(&rd) : 0;
        act->r.value = act->r.live ? rd_take(&rd, act->r.vlen) : NULL;
        if (rd.bad) PANIC("fatal: sync failed");
    }
    if (rd.bad || rd.pos != input.len) PANIC("fatal: sync failed");

    /* Any artifact brings the app into existence, whether or not we saw init. */
    State st = {0};
    state_load(&st, 1);
    st.loaded = 1;
    for (usize i = 0; i < n; i++) state_merge(&st, actions[i].key, actions[i].klen, &actions[i].r);
    commit_state(&st, NULL);
}

/* ---- ABI description (custom section `calimero_abi_v1`) -------------------- */

/* Stringify twice: once to make the JSON a C string, once more so the
 * assembler's `.ascii` directive receives it as a quoted string. */
#define STRINGIFY(...) #__VA_ARGS__
#define ASM_STRING(...) STRINGIFY(__VA_ARGS__)
#define ABI_JSON(...) ASM_STRING(STRINGIFY(__VA_ARGS__))
__asm__(".section .custom_section.calimero_abi_v1,\"\",@\n"
        ".ascii " ABI_JSON({
            "schema_version": "wasm-abi/1",
            "app": {"name": "kv-store", "language": "c", "version": "0.1.0"},
            "methods": [
                {"name": "init", "params": [], "returns": null, "mutates": true},
                {"name": "set", "params": [{"name": "key", "type": "string"}, {"name": "value", "type": "string"}], "returns": null, "mutates": true},
                {"name": "get", "params": [{"name": "key", "type": "string"}], "returns": {"option": "string"}, "mutates": false},
                {"name": "get_result", "params": [{"name": "key", "type": "string"}], "returns": "string", "errors": {"NotFound": "string"}, "mutates": false},
                {"name": "get_unchecked", "params": [{"name": "key", "type": "string"}], "returns": "string", "mutates": false},
                {"name": "entries", "params": [], "returns": {"map": ["string", "string"]}, "mutates": false},
                {"name": "len", "params": [], "returns": "u32", "mutates": false},
                {"name": "remove", "params": [{"name": "key", "type": "string"}], "returns": {"option": "string"}, "mutates": true},
                {"name": "clear", "params": [], "returns": null, "mutates": true}
            ],
            "events": [
                {"name": "Inserted", "payload": {"key": "string", "value": "string"}},
                {"name": "Updated", "payload": {"key": "string", "value": "string"}},
                {"name": "Removed", "payload": {"key": "string"}},
                {"name": "Cleared", "payload": null}
            ],
            "state_root": {"name": "KvStore", "type": {"map": ["string", "string"]}, "crdt": "lww-register-per-key"}
        }) "\n"
        ".text\n");
