//! KV-cache blocks shared between a scheduler and its workers.
//!
//! A [`KvPool`] (the scheduler's) is a shared [`Pool`](crate::Pool) with one block size: it allocates and frees
//! fixed-size blocks and names each by a [`KvBlock`] (pool token, block id, generation: 16 bytes). Workers
//! attach a [`KvMirror`] on any device and turn a block into a pointer of their own with no runtime call.
//!
//! ```text
//!   scheduler: KvPool ── alloc / alloc_many ──> KvBlock { pool, id, generation }  ──(any channel)──┐
//!                 │  free: generation + 1; a block some worker pins is kept until every pin is gone │
//!                 │                                                                                 v
//!   kv-<token>.blocks   one generation per block (owner writes)        worker: KvMirror::ptr(block)
//!   kv-<token>-*.pins   one pin count per block, per worker (the worker writes)   pin / unpin / pinned
//! ```
//!
//! **Pins (prefix sharing).** A worker that reads blocks another request produced pins them: the pin is
//! counted in the worker's own pin file, then the block's generation is checked (a freed block cannot be
//! pinned: [`Error::StaleBlock`](crate::Error::StaleBlock)). The scheduler, freeing a block, bumps its generation, then reads every
//! worker's count: if any pins it, the block is set aside (not reused) until the pins are gone. The two
//! sides order their write-then-read with sequentially consistent atomics, so either the worker sees the
//! free or the scheduler sees the pin. A worker that dies drops its pins with it: its pin file's lock goes
//! with the process, and the scheduler ignores (and removes) the pins of a worker that is gone.
//!
//! **The block table is the record.** A block is allocated when its generation is odd; the scheduler
//! keeps no map of its own. A free is one compare-and-swap of the generation (odd to even), so two threads
//! freeing the same reference cannot both succeed, and it takes no lock while no worker has a pin file
//! (the table's epoch, which a worker bumps when it adds one before it pins anything, says so); with
//! workers attached it takes the KV pool's lock to read their pin counts.
//!
//! **Block ids** are `slot * blocks_per_chunk + index`: a block's place in the pool's range, so a worker
//! computes its offset without asking. A block reference from another pool is [`Error::BadDescriptor`](crate::Error::BadDescriptor);
//! one whose block was freed since is [`Error::StaleBlock`](crate::Error::StaleBlock).
//!
//! ```text
//!   owner.rs    KvPool (the scheduler's)       mirror.rs   KvMirror, Pinned (a worker's)
//!     table.rs    the block table and the pin files (shared files)
//!     block.rs    KvLayout, KvBlock, KvDesc
//! ```

mod block;
mod mirror;
mod owner;
mod table;

pub use block::{KvBlock, KvDesc, KvLayout};
pub use mirror::{KvMirror, Pinned};
pub use owner::{KV_TAG, KvConfig, KvPool, KvStats};
pub(crate) use table::NAMES as FILE_NAMES;
