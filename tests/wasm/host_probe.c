/*
 * Exercises every host function from C, declared the way an app declares
 * them (u64 pointers, lengths and register ids), to check the C-side view of
 * the ABI against the runtime. Built by tests/wasm_fixtures.py.
 */
typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long long u64;

#define IMPORT(name) __attribute__((import_module("env"), import_name(name)))
#define EXPORT(name) __attribute__((export_name(name)))
#define REG 0xFFFFFFFEull
#define A(p) ((u64)(unsigned long)(p))

typedef struct { u64 ptr; u64 len; } Buffer;
typedef struct { Buffer file; u32 line; u32 column; } Location;
typedef struct { Buffer kind; Buffer data; } Event;
typedef struct { u64 discriminant; Buffer payload; } ValueReturn;

IMPORT("input") void input(u64);
IMPORT("register_len") u64 register_len(u64);
IMPORT("read_register") u32 read_register(u64, u64);
IMPORT("value_return") void value_return(u64);
IMPORT("log_utf8") void log_utf8(u64);
IMPORT("panic_utf8") void panic_utf8(u64, u64);
IMPORT("emit") void emit(u64);
IMPORT("context_id") void context_id(u64);
IMPORT("executor_id") void executor_id(u64);
IMPORT("account_id") void account_id(u64);
IMPORT("storage_read") u32 storage_read(u64, u64);
IMPORT("storage_write") u32 storage_write(u64, u64, u64);
IMPORT("storage_remove") u32 storage_remove(u64, u64);
IMPORT("time_now") void time_now(u64);
IMPORT("random_bytes") void random_bytes(u64);
IMPORT("ed25519_verify") u32 ed25519_verify(u64, u64, u64);

static u8 heap[65536];
static u8 out[1024];
static unsigned out_len;

static void put(const void *p, unsigned n) {
    __builtin_memcpy(out + out_len, p, n);
    out_len += n;
}

static unsigned take_register(u8 *dst) {
    u64 n = register_len(REG);
    Buffer b = {A(dst), n};
    read_register(REG, A(&b));
    return (unsigned)n;
}

static void finish(void) {
    ValueReturn v = {0, {A(out), out_len}};
    value_return(A(&v));
}

/* context id, executor id and account id, 32 bytes each */
EXPORT("ids") void ids(void) {
    context_id(REG); out_len += take_register(out + out_len);
    executor_id(REG); out_len += take_register(out + out_len);
    account_id(REG); out_len += take_register(out + out_len);
    finish();
}

/* input = key; returns write1, write2, old value, read, remove, read again */
EXPORT("storage") void storage(void) {
    input(REG);
    unsigned klen = take_register(heap);
    Buffer key = {A(heap), klen};
    Buffer v1 = {A("one"), 3}, v2 = {A("two"), 3};
    u8 r = (u8)storage_write(A(&key), A(&v1), REG); put(&r, 1);
    r = (u8)storage_write(A(&key), A(&v2), REG); put(&r, 1);
    put(heap + 1024, take_register(heap + 1024));
    r = (u8)storage_read(A(&key), REG); put(&r, 1);
    put(heap + 1024, take_register(heap + 1024));
    r = (u8)storage_remove(A(&key), REG); put(&r, 1);
    r = (u8)storage_read(A(&key), REG); put(&r, 1);
    finish();
}

/* logs, emits the input as event data, returns time (8) + 16 random bytes */
EXPORT("environment") void environment(void) {
    input(REG);
    unsigned n = take_register(heap);
    Buffer line = {A("probe says hi"), 13};
    log_utf8(A(&line));
    Event e = {{A("Probed"), 6}, {A(heap), n}};
    emit(A(&e));
    Buffer t = {A(out), 8};
    time_now(A(&t));
    Buffer rnd = {A(out + 8), 16};
    random_bytes(A(&rnd));
    out_len = 24;
    finish();
}

/* input = signature (64) | public key (32) | message; returns one byte */
EXPORT("verify") void verify(void) {
    input(REG);
    unsigned n = take_register(heap);
    Buffer sig = {A(heap), 64}, pk = {A(heap + 64), 32}, msg = {A(heap + 96), n - 96};
    u8 ok = (u8)ed25519_verify(A(&sig), A(&pk), A(&msg));
    put(&ok, 1);
    finish();
}

EXPORT("fail") void fail(void) {
    Buffer msg = {A("probe failed on purpose"), 23};
    Location loc = {{A("tests/wasm/host_probe.c"), 23}, 4242, 7};
    panic_utf8(A(&msg), A(&loc));
}
