/*
 * Exercises the host functions merod added after the fixture-era SDK (account
 * and device ids, xcall, handlers, migration witness, the node-local ordered
 * index, private storage, streaming blobs, the blocked fetch), declared the way
 * the current SDK's calimero-sys declares them. Inputs and outputs are raw
 * bytes; tests/test_runtime_head.py drives it. Built by tests/wasm_fixtures.py.
 */
typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long long u64;

#define IMPORT(name) __attribute__((import_module("env"), import_name(name)))
#define EXPORT(name) __attribute__((export_name(name)))
#define REG 0xFFFFFFFEull
#define A(p) ((u64)(unsigned long)(p))

typedef struct { u64 ptr; u64 len; } Buffer;
typedef struct { Buffer kind; Buffer data; } Event;
typedef struct { u64 discriminant; Buffer payload; } ValueReturn;
typedef struct { Buffer context_id; Buffer function; Buffer params; } XCall;

IMPORT("input") void input(u64);
IMPORT("register_len") u64 register_len(u64);
IMPORT("read_register") u32 read_register(u64, u64);
IMPORT("value_return") void value_return(u64);
IMPORT("context_id") void context_id(u64);
IMPORT("account_id") void account_id(u64);
IMPORT("device_id") void device_id(u64);
IMPORT("executor_id") void executor_id(u64);
IMPORT("xcall_origin") u32 xcall_origin(u64);
IMPORT("xcall") void xcall(u64);
IMPORT("emit_with_handler") void emit_with_handler(u64, u64);
IMPORT("emit_migration_witness") void emit_migration_witness(u64);
IMPORT("storage_index_set") u32 storage_index_set(u64, u64);
IMPORT("storage_index_remove") u32 storage_index_remove(u64);
IMPORT("storage_index_remove_prefix") u32 storage_index_remove_prefix(u64);
IMPORT("storage_index_scan") u32 storage_index_scan(u64, u64, u64, u64, u64);
IMPORT("storage_index_last") u32 storage_index_last(u64, u64, u64);
IMPORT("storage_index_meta_set") u32 storage_index_meta_set(u64, u64);
IMPORT("storage_index_meta_get") u32 storage_index_meta_get(u64, u64);
IMPORT("storage_index_meta_clear") u32 storage_index_meta_clear(u64);
IMPORT("private_storage_read") u32 private_storage_read(u64, u64);
IMPORT("private_storage_write") u32 private_storage_write(u64, u64);
IMPORT("private_storage_remove") u32 private_storage_remove(u64, u64);
IMPORT("fetch") u32 fetch(u64, u64, u64, u64, u64);
IMPORT("blob_create") u64 blob_create(void);
IMPORT("blob_write") u64 blob_write(u64, u64);
IMPORT("blob_close") u32 blob_close(u64, u64);
IMPORT("blob_open") u64 blob_open(u64);
IMPORT("blob_read") u64 blob_read(u64, u64);
IMPORT("blob_announce_to_context") u32 blob_announce_to_context(u64, u64);
IMPORT("blob_open_in_context") u64 blob_open_in_context(u64, u64);

static u8 in[65536];
static unsigned in_len;
static u8 out[65536];
static unsigned out_len;

static void read_input(void) {
    input(REG);
    in_len = (unsigned)register_len(REG);
    Buffer b = {A(in), in_len};
    read_register(REG, A(&b));
}

static void put(const void *p, unsigned n) {
    __builtin_memcpy(out + out_len, p, n);
    out_len += n;
}

static void put_flag(u32 flag) {
    u8 b = (u8)flag;
    put(&b, 1);
}

/* Append the data register (written by the call just made). */
static void put_register(void) {
    u64 n = register_len(REG);
    Buffer b = {A(out + out_len), n};
    read_register(REG, A(&b));
    out_len += (unsigned)n;
}

static void finish(void) {
    ValueReturn v = {0, {A(out), out_len}};
    value_return(A(&v));
}

/* context | account | device | executor (32 each) | origin flag | origin? */
EXPORT("identity") void identity(void) {
    context_id(REG); put_register();
    account_id(REG); put_register();
    device_id(REG); put_register();
    executor_id(REG); put_register();
    u32 has_origin = xcall_origin(REG);
    put_flag(has_origin);
    if (has_origin) put_register();
    finish();
}

/* ---- private storage: input = [op][klen][key][value] ---------------------- */

EXPORT("private") void private_op(void) {
    read_input();
    u8 op = in[0];
    Buffer key = {A(in + 2), in[1]};
    Buffer value = {A(in + 2 + in[1]), in_len - 2 - in[1]};
    if (op == 'w') {
        put_flag(private_storage_write(A(&key), A(&value)));
    } else if (op == 'r') {
        u32 found = private_storage_read(A(&key), REG);
        put_flag(found);
        if (found) put_register();
    } else {
        u32 found = private_storage_remove(A(&key), REG);
        put_flag(found);
        if (found) put_register();
    }
    finish();
}

/* input = key: write "v1", read, remove (old value), read again */
EXPORT("private_sequence") void private_sequence(void) {
    read_input();
    Buffer key = {A(in), in_len}, v1 = {A("v1"), 2};
    put_flag(private_storage_write(A(&key), A(&v1)));
    u32 found = private_storage_read(A(&key), REG);
    put_flag(found);
    if (found) put_register();
    found = private_storage_remove(A(&key), REG);
    put_flag(found);
    if (found) put_register();
    put_flag(private_storage_read(A(&key), REG));
    finish();
}

/* ---- ordered index ---------------------------------------------------------- */

/* [klen][key][value] */
EXPORT("index_set") void index_set(void) {
    read_input();
    Buffer key = {A(in + 1), in[0]};
    Buffer value = {A(in + 1 + in[0]), in_len - 1 - in[0]};
    put_flag(storage_index_set(A(&key), A(&value)));
    finish();
}

EXPORT("index_remove") void index_remove(void) {
    read_input();
    Buffer key = {A(in), in_len};
    put_flag(storage_index_remove(A(&key)));
    finish();
}

EXPORT("index_remove_prefix") void index_remove_prefix(void) {
    read_input();
    Buffer prefix = {A(in), in_len};
    put_flag(storage_index_remove_prefix(A(&prefix)));
    finish();
}

/* [lo_len][lo][hi_len][hi][offset][limit, n+1 encoded] -> flag | register */
EXPORT("index_scan") void index_scan(void) {
    read_input();
    Buffer lo = {A(in + 1), in[0]};
    u8 *h = in + 1 + in[0];
    Buffer hi = {A(h + 1), h[0]};
    u8 *rest = h + 1 + h[0];
    put_flag(storage_index_scan(A(&lo), A(&hi), rest[0], rest[1], REG));
    put_register();
    finish();
}

/* [lo_len][lo][hi_len][hi] -> flag | register */
EXPORT("index_last") void index_last(void) {
    read_input();
    Buffer lo = {A(in + 1), in[0]};
    u8 *h = in + 1 + in[0];
    Buffer hi = {A(h + 1), h[0]};
    put_flag(storage_index_last(A(&lo), A(&hi), REG));
    put_register();
    finish();
}

/* set a=1, b=2, c=3, remove b, then scan everything: the call sees its own writes */
EXPORT("index_sequence") void index_sequence(void) {
    static const char *keys[] = {"a", "b", "c"};
    static const char *values[] = {"1", "2", "3"};
    for (int i = 0; i < 3; i++) {
        Buffer k = {A(keys[i]), 1}, v = {A(values[i]), 1};
        storage_index_set(A(&k), A(&v));
    }
    Buffer b = {A("b"), 1};
    storage_index_remove(A(&b));
    Buffer lo = {A(""), 0}, hi = {A("\xff"), 1};
    storage_index_scan(A(&lo), A(&hi), 0, 0, REG);
    put_register();
    finish();
}

/* [op][klen][key][value]: 's' set, 'g' get, 'c' clear */
EXPORT("meta") void meta(void) {
    read_input();
    u8 op = in[0];
    Buffer key = {A(in + 2), in[1]};
    Buffer value = {A(in + 2 + in[1]), in_len - 2 - in[1]};
    if (op == 's') {
        put_flag(storage_index_meta_set(A(&key), A(&value)));
    } else if (op == 'g') {
        u32 found = storage_index_meta_get(A(&key), REG);
        put_flag(found);
        if (found) put_register();
    } else {
        put_flag(storage_index_meta_clear(A(&key)));
    }
    finish();
}

/* ---- xcall, handlers, witness ------------------------------------------------ */

/* [ctx_len][ctx][fn_len][fn][params] */
EXPORT("xcall") void xcall_queue(void) {
    read_input();
    u8 *f = in + 1 + in[0];
    u8 *params = f + 1 + f[0];
    XCall call = {{A(in + 1), in[0]}, {A(f + 1), f[0]}, {A(params), (u64)(in + in_len - params)}};
    xcall(A(&call));
    xcall(A(&call));
}

/* [handler_len, 255 = no handler][handler][data] */
EXPORT("emit_handler") void emit_handler(void) {
    read_input();
    u8 hlen = in[0];
    u8 *data = in + 1 + (hlen == 255 ? 0 : hlen);
    Event e = {{A("Pinged"), 6}, {A(data), (u64)(in + in_len - data)}};
    Buffer handler = {A(in + 1), hlen};
    emit_with_handler(A(&e), hlen == 255 ? 0 : A(&handler));
}

EXPORT("witness") void witness(void) {
    read_input();
    Buffer w = {A(in), in_len};
    emit_migration_witness(A(&w));
}

/* ---- blobs ---------------------------------------------------------------------- */

static void put_u64(u64 v) { put(&v, 8); }

/* Read a whole blob through `fd` in chunks of `chunk` bytes into out. */
static void drain(u64 fd, unsigned chunk) {
    for (;;) {
        Buffer b = {A(out + out_len), chunk};
        u64 n = blob_read(fd, A(&b));
        out_len += (unsigned)n;
        if (n == 0) break;
    }
}

/* input = data: create, write it in two halves, close; reopen and read back in
 * chunks of 5. out = create fd | id | open fd | data read back */
EXPORT("blob_roundtrip") void blob_roundtrip(void) {
    read_input();
    u64 fd = blob_create();
    put_u64(fd);
    unsigned half = in_len / 2;
    Buffer first = {A(in), half}, second = {A(in + half), in_len - half};
    u64 written = blob_write(fd, A(&first)) + blob_write(fd, A(&second));
    u8 id[32];
    Buffer idbuf = {A(id), 32};
    blob_close(fd, A(&idbuf));
    put(id, 32);
    u64 rd = blob_open(A(&idbuf));
    put_u64(rd);
    drain(rd, 5);
    blob_close(rd, A(&idbuf));
    if (written != in_len) __builtin_trap();
    finish();
}

/* input = id: open and read in chunks of 7; a missing blob reads as nothing */
EXPORT("blob_read_id") void blob_read_id(void) {
    read_input();
    Buffer idbuf = {A(in), in_len};
    drain(blob_open(A(&idbuf)), 7);
    finish();
}

/* input = id: announce to this context; out = flag */
EXPORT("blob_announce") void blob_announce(void) {
    read_input();
    u8 ctx[32];
    context_id(REG);
    Buffer cb = {A(ctx), 32};
    read_register(REG, A(&cb));
    Buffer idbuf = {A(in), in_len};
    put_flag(blob_announce_to_context(A(&idbuf), A(&cb)));
    finish();
}

/* input = id: open in this context (local or from peers); out = found | data */
EXPORT("blob_open_ctx") void blob_open_ctx(void) {
    read_input();
    u8 ctx[32];
    context_id(REG);
    Buffer cb = {A(ctx), 32};
    read_register(REG, A(&cb));
    Buffer idbuf = {A(in), in_len};
    u64 fd = blob_open_in_context(A(&idbuf), A(&cb));
    put_flag(fd != 0);
    if (fd) drain(fd, 64);
    finish();
}

/* blob_write to a descriptor that was never opened */
EXPORT("blob_bad_fd") void blob_bad_fd(void) {
    Buffer data = {A("x"), 1};
    blob_write(77, A(&data));
}

/* a read handle cannot be written to */
EXPORT("blob_write_read_handle") void blob_write_read_handle(void) {
    u8 id[32] = {0};
    Buffer idbuf = {A(id), 32};
    u64 fd = blob_open(A(&idbuf));
    Buffer data = {A("x"), 1};
    blob_write(fd, A(&data));
}

/* blob_close with a 16-byte id buffer */
EXPORT("blob_close_short") void blob_close_short(void) {
    u8 id[16];
    Buffer idbuf = {A(id), 16};
    blob_close(blob_create(), A(&idbuf));
}

/* open 101 handles; the 101st is refused */
EXPORT("blob_many") void blob_many(void) {
    for (int i = 0; i < 101; i++) blob_create();
}

/* ---- fetch ------------------------------------------------------------------------- */

/* merod reads none of the arguments: pass pointers far outside memory */
EXPORT("fetch_blocked") void fetch_blocked(void) {
    u64 nowhere = 0xFFFFFFFFF0ull;
    put_flag(fetch(nowhere, nowhere, nowhere, nowhere, REG));
    put_register();
    finish();
}
