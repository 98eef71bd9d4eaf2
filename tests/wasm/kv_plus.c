/*
 * The kv-store app (apps/kv-store/kv_store.c, included whole) plus methods that
 * use the host functions of current merod, so the node tests can watch them
 * work across real nodes: cross-context calls, event handlers run by the
 * receivers, node-local private storage and ordered index, streaming blobs and
 * the account/device ids. Arguments and results are JSON like the kv-store's;
 * ids travel as lowercase hex. Built by tests/wasm_fixtures.py.
 */
#include "../../apps/kv-store/kv_store.c"

typedef struct { Buffer context_id; Buffer function; Buffer params; } XCallDesc;

IMPORT("account_id") void env_account_id(u64 register_id);
IMPORT("device_id") void env_device_id(u64 register_id);
IMPORT("context_id") void env_context_id(u64 register_id);
IMPORT("xcall_origin") u32 env_xcall_origin(u64 register_id);
IMPORT("xcall") void env_xcall(u64 call);
IMPORT("emit_with_handler") void env_emit_with_handler(u64 event, u64 handler);
IMPORT("private_storage_read") u32 env_private_read(u64 key, u64 register_id);
IMPORT("private_storage_write") u32 env_private_write(u64 key, u64 value);
IMPORT("private_storage_remove") u32 env_private_remove(u64 key, u64 register_id);
IMPORT("storage_index_set") u32 env_index_set(u64 key, u64 value);
IMPORT("storage_index_scan") u32 env_index_scan(u64 lo, u64 hi, u64 offset, u64 limit, u64 register_id);
IMPORT("blob_create") u64 env_blob_create(void);
IMPORT("blob_write") u64 env_blob_write(u64 fd, u64 data);
IMPORT("blob_close") u32 env_blob_close(u64 fd, u64 id);
IMPORT("blob_open") u64 env_blob_open(u64 id);
IMPORT("blob_read") u64 env_blob_read(u64 fd, u64 data);
IMPORT("blob_open_in_context") u64 env_blob_open_in_context(u64 id, u64 context);

static void buf_hex(Buf *b, const u8 *p, usize n) {
    static const char digits[] = "0123456789abcdef";
    for (usize i = 0; i < n; i++) {
        buf_byte(b, (u8)digits[p[i] >> 4]);
        buf_byte(b, (u8)digits[p[i] & 15]);
    }
}

static int hex_digit(u8 c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

static void unhex32(const Buf *text, u8 out[32]) {
    if (text->len != 64) PANIC("expected 64 lowercase hex digits");
    for (int i = 0; i < 32; i++) {
        int hi = hex_digit(text->p[2 * i]), lo = hex_digit(text->p[2 * i + 1]);
        if (hi < 0 || lo < 0) PANIC("expected 64 lowercase hex digits");
        out[i] = (u8)(hi << 4 | lo);
    }
}

static void parse(const char *const *names, Buf *values, int count) {
    Buf input = read_input();
    parse_args(&input, names, values, count);
}

static void return_string(const u8 *p, usize n) {
    Buf out = {0};
    json_string(&out, p, n);
    return_json(0, &out);
}

static void return_hex(const u8 *p, usize n) {
    Buf out = {0};
    buf_byte(&out, '"');
    buf_hex(&out, p, n);
    buf_byte(&out, '"');
    return_json(0, &out);
}

/* Set one key the way `set` does, without its log and event. */
static void put_key(const Buf *key, const Buf *value) {
    State st = {0};
    state_require(&st, 1);
    Record current;
    int exists = record_load(key->p, key->len, &current);
    Record r = local_record(&current, exists, 1, value);
    Artifact a = {{0}, 0};
    if (state_merge(&st, key->p, key->len, &r)) artifact_action(&a, key->p, key->len, &r);
    commit_state(&st, &a);
}

/* {"account","device"} as hex */
EXPORT("whoami") void plus_whoami(void) {
    Buf out = {0};
    buf_str(&out, "{\"account\":\"");
    env_account_id(DATA_REGISTER);
    Buf account = read_register(DATA_REGISTER);
    buf_hex(&out, account.p, account.len);
    buf_str(&out, "\",\"device\":\"");
    env_device_id(DATA_REGISTER);
    Buf device = read_register(DATA_REGISTER);
    buf_hex(&out, device.p, device.len);
    buf_str(&out, "\"}");
    return_json(0, &out);
}

/* ---- cross-context calls ----------------------------------------------------- */

/* Queue `function(params)` on context `context` (hex); params is JSON text. */
EXPORT("xcall_to") void plus_xcall_to(void) {
    static const char *const names[] = {"context", "function", "params"};
    Buf args[3];
    parse(names, args, 3);
    u8 target[32];
    unhex32(&args[0], target);
    XCallDesc call = {{addr(target), 32}, {addr(args[1].p), args[1].len}, {addr(args[2].p), args[2].len}};
    env_xcall(addr(&call));
    return_literal("null");
}

/* Store under `key` who called: the calling context (hex) for an xcall, "direct" otherwise. */
EXPORT("set_origin") void plus_set_origin(void) {
    static const char *const names[] = {"key"};
    Buf args[1];
    parse(names, args, 1);
    Buf value = {0};
    if (env_xcall_origin(DATA_REGISTER)) {
        Buf origin = read_register(DATA_REGISTER);
        buf_hex(&value, origin.p, origin.len);
    } else {
        buf_str(&value, "direct");
    }
    return_string(value.p, value.len);
    put_key(&args[0], &value);
}

/* ---- event handlers -------------------------------------------------------------- */

/* Like set, with a `Pinged` event whose handler `on_ping` the receivers run. */
EXPORT("set_and_ping") void plus_set_and_ping(void) {
    static const char *const names[] = {"key", "value"};
    Buf args[2];
    parse(names, args, 2);
    Buf data = {0};
    buf_str(&data, "{\"key\":");
    json_string(&data, args[0].p, args[0].len);
    buf_str(&data, ",\"value\":");
    json_string(&data, args[1].p, args[1].len);
    buf_byte(&data, '}');
    EventDesc e = {{addr("Pinged"), 6}, {addr(data.p), data.len}};
    Buffer handler = {addr("on_ping"), 7};
    env_emit_with_handler(addr(&e), addr(&handler));
    return_literal("null");
    put_key(&args[0], &args[1]);
}

/* The handler: record "handled:<key>" = the device (hex) of the node running it. */
EXPORT("on_ping") void plus_on_ping(void) {
    static const char *const names[] = {"key", "value"};
    Buf args[2];
    parse(names, args, 2);
    Buf key = {0};
    buf_str(&key, "handled:");
    buf_put(&key, args[0].p, args[0].len);
    env_device_id(DATA_REGISTER);
    Buf device = read_register(DATA_REGISTER);
    Buf value = {0};
    buf_hex(&value, device.p, device.len);
    return_literal("null");
    put_key(&key, &value);
}

/* ---- node-local storage ------------------------------------------------------------ */

EXPORT("remember") void plus_remember(void) {
    static const char *const names[] = {"key", "value"};
    Buf args[2];
    parse(names, args, 2);
    Buffer k = {addr(args[0].p), args[0].len}, v = {addr(args[1].p), args[1].len};
    return_literal(env_private_write(addr(&k), addr(&v)) ? "true" : "false");
}

EXPORT("recall") void plus_recall(void) {
    Buf key = arg_key();
    Buffer k = {addr(key.p), key.len};
    if (!env_private_read(addr(&k), DATA_REGISTER)) { return_literal("null"); return; }
    Buf value = read_register(DATA_REGISTER);
    return_string(value.p, value.len);
}

EXPORT("forget") void plus_forget(void) {
    Buf key = arg_key();
    Buffer k = {addr(key.p), key.len};
    if (!env_private_remove(addr(&k), DATA_REGISTER)) { return_literal("null"); return; }
    Buf value = read_register(DATA_REGISTER);
    return_string(value.p, value.len);
}

EXPORT("index_put") void plus_index_put(void) {
    static const char *const names[] = {"key", "value"};
    Buf args[2];
    parse(names, args, 2);
    Buffer k = {addr(args[0].p), args[0].len}, v = {addr(args[1].p), args[1].len};
    return_literal(env_index_set(addr(&k), addr(&v)) ? "true" : "false");
}

/* Every key of the ordered index, in order, as a JSON array of strings. */
EXPORT("index_keys") void plus_index_keys(void) {
    Buffer lo = {addr(""), 0}, hi = {addr("\xff"), 1};
    env_index_scan(addr(&lo), addr(&hi), 0, 0, DATA_REGISTER);
    Buf reg = read_register(DATA_REGISTER);
    Reader rd = {reg.p, reg.len, 0, 0};
    u32 count = rd_u32(&rd);
    Buf out = {0};
    buf_byte(&out, '[');
    for (u32 i = 0; i < count; i++) {
        u32 klen = rd_u32(&rd);
        const u8 *key = rd_take(&rd, klen);
        u32 vlen = rd_u32(&rd);
        rd_take(&rd, vlen);
        if (rd.bad) PANIC("bad index scan encoding");
        if (i) buf_byte(&out, ',');
        json_string(&out, key, klen);
    }
    buf_byte(&out, ']');
    return_json(0, &out);
}

/* ---- blobs --------------------------------------------------------------------------- */

/* Store `data` as a blob (written in two chunks); return its id (hex). */
EXPORT("blob_put") void plus_blob_put(void) {
    static const char *const names[] = {"data"};
    Buf args[1];
    parse(names, args, 1);
    u64 fd = env_blob_create();
    usize half = args[0].len / 2;
    Buffer first = {addr(args[0].p), half}, second = {addr(args[0].p + half), args[0].len - half};
    env_blob_write(fd, addr(&first));
    env_blob_write(fd, addr(&second));
    u8 id[32];
    Buffer idbuf = {addr(id), 32};
    if (!env_blob_close(fd, addr(&idbuf))) PANIC("Blob operation failed");
    return_hex(id, 32);
}

static void return_blob(u64 fd) {
    Buf data = {0};
    for (;;) {
        buf_reserve(&data, 64);
        Buffer chunk = {addr(data.p + data.len), 64};
        u64 n = env_blob_read(fd, addr(&chunk));
        if (!n) break;
        data.len += (usize)n;
    }
    if (!utf8_valid(data.p, data.len)) PANIC("blob is not UTF-8 text");
    return_string(data.p, data.len);
}

/* The blob `blob` (hex) held on this node, as text ("" when missing). */
EXPORT("blob_get") void plus_blob_get(void) {
    static const char *const names[] = {"blob"};
    Buf args[1];
    parse(names, args, 1);
    u8 id[32];
    unhex32(&args[0], id);
    Buffer idbuf = {addr(id), 32};
    return_blob(env_blob_open(addr(&idbuf)));
}

/* The blob `blob` (hex) from this node or the context's peers, or null. */
EXPORT("blob_fetch") void plus_blob_fetch(void) {
    static const char *const names[] = {"blob"};
    Buf args[1];
    parse(names, args, 1);
    u8 id[32], ctx[32];
    unhex32(&args[0], id);
    env_context_id(DATA_REGISTER);
    Buf c = read_register(DATA_REGISTER);
    __builtin_memcpy(ctx, c.p, 32);
    Buffer idbuf = {addr(id), 32}, ctxbuf = {addr(ctx), 32};
    u64 fd = env_blob_open_in_context(addr(&idbuf), addr(&ctxbuf));
    if (!fd) { return_literal("null"); return; }
    return_blob(fd);
}

/* Never returns: loops over a host call, which costs the guest almost no gas. */
EXPORT("spin_host") void plus_spin_host(void) {
    for (;;) env_register_len(12345);
}
