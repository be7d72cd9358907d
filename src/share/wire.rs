//! The rendezvous protocol between an owner and the workers that attach mirrors of its pool, over a
//! Unix-domain stream socket.
//!
//! ```text
//!   frame:   u32 length (little-endian, at most 4096) | payload
//!   payload: u8 tag | fields (little-endian integers; text as u16 length + UTF-8)
//!
//!   worker -> owner   Hello    { version u16, tgid i32, device i32 }
//!   owner  -> worker  Welcome  { version u16, table path, token u64, chunk bytes u64, slots u32,
//!                                owner device i32, export flags u64, generation u64 }
//!                     Refused  { reason }
//!   worker -> owner   Ack      { generation u64 }        (after each sync; the owner frees retired
//!                                                          chunks once every mirror has acknowledged them)
//! ```
//!
//! Every decode checks lengths, tags, versions and ranges and returns [`Error::Protocol`] for anything
//! else: a peer cannot make the other side panic or allocate without bound.

use std::io::{Read, Write};
use std::path::PathBuf;

use crate::error::{Error, Result};

/// Protocol version; both sides must speak the same.
pub(crate) const VERSION: u16 = 1;
/// Largest frame either side accepts.
pub(crate) const MAX_FRAME: usize = 4096;

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const REFUSED: u8 = 3;
const ACK: u8 = 4;

/// A rendezvous message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A worker introduces itself.
    Hello {
        /// Its protocol version.
        version: u16,
        /// Its pid as the host sees it (`aclrtDeviceGetBareTgid`).
        tgid: i32,
        /// The device it will map the pool on.
        device: i32,
    },
    /// The owner admits it: what it needs to attach a mirror.
    Welcome {
        /// The owner's protocol version.
        version: u16,
        /// The chunk table's file.
        table: PathBuf,
        /// The pool's token.
        token: u64,
        /// Chunk size.
        chunk_bytes: u64,
        /// Chunk slots.
        slots: u32,
        /// The owner's device.
        device: i32,
        /// The flags the chunks were exported with.
        export_flags: u64,
        /// The table's generation when the worker was whitelisted.
        generation: u64,
    },
    /// The owner turns it away, and says why.
    Refused {
        /// Why.
        reason: String,
    },
    /// The worker's mirror has synced to this generation.
    Ack {
        /// The generation.
        generation: u64,
    },
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn text(&mut self, s: &str) -> Result<()> {
        let n = u16::try_from(s.len()).map_err(|_| Error::Protocol("a text field is too long".into()))?;
        self.u16(n);
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(Error::Protocol("a message is shorter than its fields".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn text(&mut self) -> Result<String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| Error::Protocol("a text field is not UTF-8".into()))
    }
    fn end(&self) -> Result<()> {
        if self.0.is_empty() { Ok(()) } else { Err(Error::Protocol("a message has trailing bytes".into())) }
    }
}

impl Message {
    /// The payload (without the length prefix).
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut w = Writer(Vec::with_capacity(64));
        match self {
            Message::Hello { version, tgid, device } => {
                w.u8(HELLO);
                w.u16(*version);
                w.i32(*tgid);
                w.i32(*device);
            }
            Message::Welcome { version, table, token, chunk_bytes, slots, device, export_flags, generation } => {
                w.u8(WELCOME);
                w.u16(*version);
                let t = table.to_str().ok_or_else(|| Error::Protocol("the table path is not UTF-8".into()))?;
                w.text(t)?;
                w.u64(*token);
                w.u64(*chunk_bytes);
                w.u32(*slots);
                w.i32(*device);
                w.u64(*export_flags);
                w.u64(*generation);
            }
            Message::Refused { reason } => {
                w.u8(REFUSED);
                w.text(reason)?;
            }
            Message::Ack { generation } => {
                w.u8(ACK);
                w.u64(*generation);
            }
        }
        if w.0.len() > MAX_FRAME {
            return Err(Error::Protocol("a message is larger than a frame".into()));
        }
        Ok(w.0)
    }

    /// Decode a payload; anything malformed is [`Error::Protocol`].
    pub fn decode(payload: &[u8]) -> Result<Message> {
        if payload.len() > MAX_FRAME {
            return Err(Error::Protocol("a message is larger than a frame".into()));
        }
        let mut r = Reader(payload);
        let m = match r.u8()? {
            HELLO => Message::Hello { version: r.u16()?, tgid: r.i32()?, device: r.i32()? },
            WELCOME => Message::Welcome {
                version: r.u16()?,
                table: PathBuf::from(r.text()?),
                token: r.u64()?,
                chunk_bytes: r.u64()?,
                slots: r.u32()?,
                device: r.i32()?,
                export_flags: r.u64()?,
                generation: r.u64()?,
            },
            REFUSED => Message::Refused { reason: r.text()? },
            ACK => Message::Ack { generation: r.u64()? },
            tag => return Err(Error::Protocol(format!("unknown message tag {tag}"))),
        };
        r.end()?;
        if let Message::Hello { version, .. } | Message::Welcome { version, .. } = m
            && version != VERSION
        {
            return Err(Error::Protocol(format!("protocol version {version}; this aclshm speaks {VERSION}")));
        }
        Ok(m)
    }

    /// Write one framed message.
    pub fn send(&self, w: &mut impl Write) -> Result<()> {
        w.write_all(&self.frame()?).map_err(|e| Error::io("send a rendezvous message", e))
    }

    /// The message as it goes on the wire: its length (4 bytes, little-endian), then its payload.
    pub fn frame(&self) -> Result<Vec<u8>> {
        let payload = self.encode()?;
        let mut frame = Vec::with_capacity(4 + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&payload);
        Ok(frame)
    }

    /// Take one whole framed message off the front of `buf` (bytes received so far), if it holds one; the
    /// bytes of a message still arriving stay. What the rendezvous does with non-blocking sockets.
    pub fn take(buf: &mut Vec<u8>) -> Result<Option<Message>> {
        take_frame(buf)
    }

    /// Read one framed message; `Ok(None)` at a clean end of stream. (Blocking; the rendezvous reads
    /// non-blocking sockets, frame by frame, as bytes arrive.)
    pub fn recv(r: &mut impl Read) -> Result<Option<Message>> {
        let mut len = [0u8; 4];
        match r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(Error::io("receive a rendezvous message", e)),
        }
        let n = u32::from_le_bytes(len) as usize;
        if n > MAX_FRAME {
            return Err(Error::Protocol(format!("a frame of {n} bytes is larger than {MAX_FRAME}")));
        }
        let mut payload = vec![0u8; n];
        r.read_exact(&mut payload).map_err(|e| Error::io("receive a rendezvous message", e))?;
        Message::decode(&payload).map(Some)
    }
}

/// Take one whole framed message off the front of `buf`, if it holds one; bytes of a message still
/// arriving stay. A frame larger than [`MAX_FRAME`] or a malformed message is [`Error::Protocol`].
pub(crate) fn take_frame(buf: &mut Vec<u8>) -> Result<Option<Message>> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let n = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if n > MAX_FRAME {
        return Err(Error::Protocol(format!("a frame of {n} bytes is larger than {MAX_FRAME}")));
    }
    if buf.len() < 4 + n {
        return Ok(None);
    }
    let m = Message::decode(&buf[4..4 + n]);
    buf.drain(..4 + n);
    m.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Message> {
        vec![
            Message::Hello { version: VERSION, tgid: 42, device: 1 },
            Message::Welcome {
                version: VERSION,
                table: PathBuf::from("/dev/shm/x/pool.table"),
                token: 7,
                chunk_bytes: 20 << 20,
                slots: 100,
                device: 0,
                export_flags: 0,
                generation: 9,
            },
            Message::Refused { reason: "no".into() },
            Message::Ack { generation: 3 },
        ]
    }

    #[test]
    fn every_message_round_trips_through_a_frame() {
        for m in all() {
            let mut buf = Vec::new();
            m.send(&mut buf).unwrap();
            assert_eq!(Message::recv(&mut buf.as_slice()).unwrap(), Some(m));
        }
        assert_eq!(Message::recv(&mut [].as_slice()).unwrap(), None);
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        for m in all() {
            let p = m.encode().unwrap();
            for cut in 0..p.len() {
                assert!(Message::decode(&p[..cut]).is_err(), "{m:?} cut at {cut}");
            }
            let mut longer = p.clone();
            longer.push(0);
            assert!(Message::decode(&longer).is_err());
        }
        assert!(Message::decode(&[9]).is_err());
        let mut old = Message::Hello { version: VERSION, tgid: 1, device: 0 }.encode().unwrap();
        old[1] = 0;
        assert!(Message::decode(&old).is_err(), "another protocol version");
        let huge = (MAX_FRAME as u32 + 1).to_le_bytes();
        assert!(Message::recv(&mut huge.as_slice()).is_err());
    }

    #[test]
    fn frames_are_taken_whole_however_the_bytes_arrive() {
        let mut wire = Vec::new();
        for m in all() {
            m.send(&mut wire).unwrap();
        }
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for b in wire {
            buf.push(b);
            while let Some(m) = take_frame(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, all());
        assert!(buf.is_empty());
        let mut huge = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        assert!(take_frame(&mut huge).is_err());
    }
}
