//! Hostile frames and connections on an owner's rendezvous socket. The test process is the attacker: it
//! connects to the socket (same user: the socket and its directory are private to the user, so that is
//! who can reach it) and sends what a broken or malicious peer would. After each attack the owner must
//! still answer, and the connection must have been refused or dropped as the protocol says; at the end
//! a real worker attaches and reads the owner's data, while a silent connection still hangs on.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use aclshm::ShareDesc;
use aclshm::share::{Message, PROTOCOL_VERSION};

use super::{MIB, Tally, attach_and_check, ensure, owner_with_data, try_worker};
use crate::harness::*;
use crate::test_name;

/// A framed message's bytes (length prefix, then the payload).
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

fn hello(tgid: i32, device: i32) -> Vec<u8> {
    frame(&Message::Hello { version: PROTOCOL_VERSION, tgid, device }.encode().unwrap())
}

/// What the owner did with a connection after `bytes`: the messages it sent back, and whether it closed
/// the connection (within the wait).
fn answer(socket: &std::path::Path, bytes: &[u8], wait: Duration) -> Result<(Vec<Message>, bool), String> {
    let mut c = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(wait)).unwrap();
    // The owner may hang up before reading everything: a write error then is its answer too.
    let _ = c.write_all(bytes);
    read_all(&mut c)
}

fn read_all(c: &mut UnixStream) -> Result<(Vec<Message>, bool), String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match c.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break false,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(e) => return Err(format!("read: {e}")),
        }
    };
    let mut msgs = Vec::new();
    while let Some(m) = Message::take(&mut got).map_err(|e| format!("the owner sent a bad frame: {e}"))? {
        msgs.push(m);
    }
    Ok((msgs, closed))
}

/// The owner hung up with nothing said (or only a refusal whose reason contains `why`).
fn dropped(r: Result<(Vec<Message>, bool), String>, why: Option<&str>) -> Result<(), String> {
    let (msgs, closed) = r?;
    ensure(closed, || "the owner kept the connection".into())?;
    match (msgs.as_slice(), why) {
        ([], None) => Ok(()),
        ([Message::Refused { reason }], Some(w)) if reason.contains(w) => Ok(()),
        (other, _) => Err(format!("the owner answered {other:?}")),
    }
}

#[test]
fn hostile_frames_on_the_rendezvous_leave_the_owner_serving() {
    by_role(
        test_name!(),
        |rt, role| match role {
            "owner" => {
                let (pool, a) = owner_with_data(rt, 21);
                loop {
                    match hear().as_str() {
                        "alive?" => say(format!("alive {}", pool.share_stats().map_or(0, |s| s.mirrors))),
                        "done" => break,
                        other => panic!("owner: {other:?}"),
                    }
                }
                pool.free(a).unwrap();
                pool.close().unwrap();
                say("ok");
            }
            _ => {
                let (m, _) = attach_and_check(rt, 21).unwrap();
                say("read");
                m.close().unwrap();
                say("ok");
            }
        },
        |sc| {
            let sc = sc.shared();
            let mut owner = sc.spawn("owner");
            let share: ShareDesc = owner.expect("share").parse().unwrap();
            let desc = owner.expect("desc");
            let sock = share.socket.clone();
            let quick = Duration::from_secs(5);
            let me = std::process::id() as i32;
            let mut t = Tally::default();
            let mut rng = Rng::new(me as u64);
            let still_serving = |owner: &mut Peer, t: &mut Tally, after: &str| {
                owner.send("alive?");
                let mirrors = owner.expect("alive");
                t.attack(&format!("the owner serves after {after}"), || {
                    ensure(mirrors == "0", || format!("{mirrors} mirrors"))
                });
            };

            let garbage: Vec<u8> = (0..1024).map(|_| rng.next() as u8).collect();
            t.attack("garbage", || dropped(answer(&sock, &garbage, quick), None));
            still_serving(&mut owner, &mut t, "garbage");
            t.attack("a frame longer than any", || {
                let mut b = u32::MAX.to_le_bytes().to_vec();
                b.extend_from_slice(&[0u8; 64]);
                dropped(answer(&sock, &b, quick), None)
            });
            t.attack("frames filling the owner's buffer without ending", || {
                // Just under the largest frame, many times over: never a whole message.
                let mut b = 4096u32.to_le_bytes().to_vec();
                b.resize(4 + 64 * 1024, 7);
                dropped(answer(&sock, &b, quick), None)
            });
            t.attack("an unknown message tag", || dropped(answer(&sock, &frame(&[0x7f, 1, 2, 3]), quick), None));
            t.attack("an empty frame", || dropped(answer(&sock, &frame(&[]), quick), None));
            t.attack("a Hello of another protocol version", || {
                let mut p = Message::Hello { version: PROTOCOL_VERSION, tgid: me, device: 0 }.encode().unwrap();
                p[1] ^= 0x40;
                dropped(answer(&sock, &frame(&p), quick), None)
            });
            t.attack("a Hello with trailing bytes", || {
                let mut p = Message::Hello { version: PROTOCOL_VERSION, tgid: me, device: 0 }.encode().unwrap();
                p.push(0);
                dropped(answer(&sock, &frame(&p), quick), None)
            });
            t.attack("a Hello claiming another pid", || {
                dropped(answer(&sock, &hello(1, 0), quick), Some("the kernel says"))
            });
            t.attack("a Hello claiming pid 0", || dropped(answer(&sock, &hello(0, 0), quick), Some("the kernel says")));
            t.attack("a Hello for device -1", || dropped(answer(&sock, &hello(me, -1), quick), Some("device -1")));
            t.attack("an Ack before any Hello", || {
                dropped(answer(&sock, &frame(&Message::Ack { generation: 1 }.encode().unwrap()), quick), None)
            });
            t.attack("a Welcome sent to the owner", || {
                let w = Message::Welcome {
                    version: PROTOCOL_VERSION,
                    table: "/etc/passwd".into(),
                    token: share.token,
                    chunk_bytes: 2 * MIB,
                    slots: 1,
                    device: 0,
                    export_flags: 0,
                    generation: 1,
                };
                dropped(answer(&sock, &frame(&w.encode().unwrap()), quick), None)
            });
            t.attack("a refusal sent to the owner", || {
                let r = Message::Refused { reason: "x".repeat(1000) };
                dropped(answer(&sock, &frame(&r.encode().unwrap()), quick), None)
            });
            still_serving(&mut owner, &mut t, "malformed and misdirected frames");
            // Admitted (this process is who it says), then breaking the protocol: it is forgotten.
            t.attack("a second Hello after being welcomed", || {
                let mut c = UnixStream::connect(&sock).map_err(|e| e.to_string())?;
                c.set_read_timeout(Some(quick)).unwrap();
                c.write_all(&hello(me, 0)).map_err(|e| e.to_string())?;
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while Message::take(&mut got.clone()).ok().flatten().is_none() {
                    let n = c.read(&mut buf).map_err(|e| e.to_string())?;
                    ensure(n > 0, || "closed before a Welcome".into())?;
                    got.extend_from_slice(&buf[..n]);
                }
                ensure(matches!(Message::take(&mut got), Ok(Some(Message::Welcome { .. }))), || "no Welcome".into())?;
                let _ = c.write_all(&hello(me, 0));
                let (_, closed) = read_all(&mut c)?;
                ensure(closed, || "the owner kept a peer that said Hello twice".into())
            });
            t.attack("an Ack of a generation from the future, then gone", || {
                let mut c = UnixStream::connect(&sock).map_err(|e| e.to_string())?;
                c.set_read_timeout(Some(quick)).unwrap();
                c.write_all(&hello(me, 0)).map_err(|e| e.to_string())?;
                c.write_all(&frame(&Message::Ack { generation: u64::MAX }.encode().unwrap()))
                    .map_err(|e| e.to_string())?;
                // Kept: a connection the owner keeps is only seen not to close, for a while.
                c.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
                let (msgs, closed) = read_all(&mut c)?;
                ensure(!closed && matches!(msgs.as_slice(), [Message::Welcome { .. }]), || format!("{msgs:?} {closed}"))
            });
            t.attack("a Hello sent one byte at a time", || {
                let mut c = UnixStream::connect(&sock).map_err(|e| e.to_string())?;
                c.set_read_timeout(Some(quick)).unwrap();
                for b in hello(me, 0) {
                    c.write_all(&[b]).map_err(|e| e.to_string())?;
                    std::thread::sleep(Duration::from_millis(2));
                }
                c.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
                let (msgs, _) = read_all(&mut c)?;
                ensure(matches!(msgs.as_slice(), [Message::Welcome { .. }]), || format!("{msgs:?}"))
            });
            // Every admitted connection above is gone: the owner forgot them.
            eventually("the owner forgets the peers that went", || {
                owner.send("alive?");
                owner.expect("alive") == "0"
            });
            t.attack("two hundred connections at once that say nothing", || {
                let held: Vec<UnixStream> = (0..200).filter_map(|_| UnixStream::connect(&sock).ok()).collect();
                ensure(held.len() == 200, || format!("{} of 200 connected", held.len()))
            });
            still_serving(&mut owner, &mut t, "a crowd of silent connections");
            // A real worker attaches while a silent connection hangs on: one peer never holds up another.
            let silent = UnixStream::connect(&sock).unwrap();
            let read = try_worker(&sc, &share.to_string(), &desc);
            t.attack("a real worker attaches and reads while a silent connection hangs on", || {
                ensure(read == "read", || read.clone())
            });
            drop(silent);
            // An admitted peer that never stops sending (acknowledgements, as fast as the owner reads them):
            // the rendezvous thread still serves the others (it used to read the flood without end).
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flood = {
                let mut c = UnixStream::connect(&sock).unwrap();
                c.write_all(&hello(me, 0)).unwrap();
                let stop = std::sync::Arc::clone(&stop);
                std::thread::spawn(move || {
                    let burst = frame(&Message::Ack { generation: 1 }.encode().unwrap()).repeat(256);
                    let mut sent = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && c.write_all(&burst).is_ok() {
                        sent += 1;
                    }
                    sent
                })
            };
            let read = try_worker(&sc, &share.to_string(), &desc);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let bursts = flood.join().unwrap();
            t.attack("a real worker attaches and reads while an admitted peer floods acknowledgements", || {
                ensure(read == "read", || read.clone())?;
                ensure(bursts > 0, || "the flood sent nothing".into())
            });
            owner.send("done");
            owner.expect("ok");
            owner.join();
            sc.finish();
            t.report("rendezvous");
        },
    );
}
