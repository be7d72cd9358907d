//! Cross-process tests of the ACL runtime as aclshm sees it through its seam: every documented rule of
//! VMM sharing, IPC memory, IPC notify, devices, streams and copies, allowed and refused, with real
//! processes (see `harness`). By default the children use the embedded simulator; with
//! `ACLSHM_BACKEND=acl ACLSHM_ACL_LIB=target/debug/libascendcl.so` they use the drop-in library instead,
//! so the same suite covers the FFI path.

mod harness;

mod adversarial;
mod basic;
mod crash;
mod ipc;
mod keyed;
mod kv;
mod lifecycle;
mod loader;
mod notify;
mod pool;
mod runtime_breadth;
mod security;
mod share;
mod sleep;
mod soak;
mod sweep;
mod vmm;
