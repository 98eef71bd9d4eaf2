/* Imports two host functions merod removed in 2026-03: linking must fail. */
typedef unsigned long long u64;
__attribute__((import_module("env"), import_name("send_proposal"))) void send_proposal(u64, u64);
__attribute__((import_module("env"), import_name("approve_proposal"))) void approve_proposal(u64);
__attribute__((export_name("propose"))) void propose(void) {
    send_proposal(0, 0);
    approve_proposal(0);
}
