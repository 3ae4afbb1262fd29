//! The backup format: the magic `PTREDIS1`, then one record per key, then an end record.
//! Integers are big-endian.
//!
//! ```text
//! "PTREDIS1"
//! 'K' u32 key_len key  u64 ttl_ms  u32 payload_len payload     (ttl_ms 0: no expiry)
//! ...
//! 'E' u64 record_count
//! ```
//!
//! A key is written *relative to the add-on's prefix* (`pt_blog_redis:user:1` is written
//! `user:1`), so a restore puts every key under the prefix of the add-on it restores into:
//! a backup can never name a key outside it. The payload is Redis's own `DUMP`
//! serialization, checksummed by Redis, which `RESTORE` checks. The end record tells a
//! whole backup from a cut one.

use paastech_core::{Error, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const MAGIC: &[u8; 8] = b"PTREDIS1";
const RECORD: u8 = b'K';
const END: u8 = b'E';
/// Redis's own limit on a key or a value (`proto-max-bulk-len`'s default).
const MAX_LEN: u32 = 512 * 1024 * 1024;

/// One key of a backup.
#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    /// The key without the add-on's prefix.
    pub key: Vec<u8>,
    /// Milliseconds left to live; 0 when the key does not expire.
    pub ttl_ms: u64,
    /// What `DUMP` answered.
    pub payload: Vec<u8>,
}

pub async fn write_magic(out: &mut (impl AsyncWrite + Unpin + ?Sized)) -> std::io::Result<()> {
    out.write_all(MAGIC).await
}

pub async fn write_record(
    out: &mut (impl AsyncWrite + Unpin + ?Sized),
    key: &[u8],
    ttl_ms: u64,
    payload: &[u8],
) -> std::io::Result<()> {
    let (key_len, payload_len) = (len32(key)?, len32(payload)?);
    let mut head = Vec::with_capacity(1 + 4 + key.len() + 8 + 4);
    head.push(RECORD);
    head.extend_from_slice(&key_len.to_be_bytes());
    head.extend_from_slice(key);
    head.extend_from_slice(&ttl_ms.to_be_bytes());
    head.extend_from_slice(&payload_len.to_be_bytes());
    out.write_all(&head).await?;
    out.write_all(payload).await
}

pub async fn write_end(out: &mut (impl AsyncWrite + Unpin + ?Sized), count: u64) -> std::io::Result<()> {
    let mut end = vec![END];
    end.extend_from_slice(&count.to_be_bytes());
    out.write_all(&end).await
}

fn len32(bytes: &[u8]) -> std::io::Result<u32> {
    u32::try_from(bytes.len())
        .ok()
        .filter(|len| *len <= MAX_LEN)
        .ok_or_else(|| std::io::Error::other("a key or value larger than 512 MiB"))
}

/// Reads a backup record by record, never more than one record in memory.
pub struct Reader<R> {
    input: R,
    read: u64,
    done: bool,
}

fn not_a_backup() -> Error {
    Error::Invalid("the restore input is not a PaaSTech Redis backup (as `addons backup` writes)".into())
}

fn cut(read: u64) -> Error {
    Error::Invalid(format!("the redis backup is cut short after {read} records (no end record): nothing was restored"))
}

fn io(err: std::io::Error) -> Error {
    Error::internal("reading the restore input", err)
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Checks the magic: anything else is not a backup.
    pub async fn open(mut input: R) -> Result<Self> {
        let mut magic = [0u8; MAGIC.len()];
        let mut filled = 0;
        while filled < magic.len() {
            match input.read(&mut magic[filled..]).await.map_err(io)? {
                0 => break,
                n => filled += n,
            }
        }
        if &magic[..filled] != MAGIC.as_slice() {
            return Err(not_a_backup());
        }
        Ok(Reader { input, read: 0, done: false })
    }

    /// The next record, or `None` after the end record (whose count is checked, and after
    /// which nothing may follow).
    pub async fn next(&mut self) -> Result<Option<Record>> {
        if self.done {
            return Ok(None);
        }
        let tag = match self.input.read_u8().await {
            Ok(tag) => tag,
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Err(cut(self.read)),
            Err(err) => return Err(io(err)),
        };
        match tag {
            RECORD => {
                let key = self.bytes().await?;
                let ttl_ms = self.input.read_u64().await.map_err(|err| self.eof(err))?;
                let payload = self.bytes().await?;
                self.read += 1;
                Ok(Some(Record { key, ttl_ms, payload }))
            }
            END => {
                let count = self.input.read_u64().await.map_err(|err| self.eof(err))?;
                if count != self.read {
                    return Err(Error::Invalid(format!(
                        "the redis backup's end record counts {count} records but it holds {}: nothing was restored",
                        self.read
                    )));
                }
                let mut extra = [0u8; 1];
                if self.input.read(&mut extra).await.map_err(io)? != 0 {
                    return Err(Error::Invalid(
                        "the redis backup has data after its end record: nothing was restored".into(),
                    ));
                }
                self.done = true;
                Ok(None)
            }
            other => Err(Error::Invalid(format!(
                "the redis backup has an unknown record type {other:#04x} after {} records: nothing was restored",
                self.read
            ))),
        }
    }

    async fn bytes(&mut self) -> Result<Vec<u8>> {
        let len = self.input.read_u32().await.map_err(|err| self.eof(err))?;
        if len > MAX_LEN {
            return Err(Error::Invalid(format!(
                "the redis backup has a record of {len} bytes, more than redis allows: nothing was restored"
            )));
        }
        // Grown as bytes arrive: a forged length cannot make this allocate 512 MiB up front.
        let mut bytes = Vec::new();
        (&mut self.input).take(u64::from(len)).read_to_end(&mut bytes).await.map_err(io)?;
        if bytes.len() != len as usize {
            return Err(cut(self.read));
        }
        Ok(bytes)
    }

    fn eof(&self, err: std::io::Error) -> Error {
        if err.kind() == std::io::ErrorKind::UnexpectedEof { cut(self.read) } else { io(err) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        write_magic(&mut out).await.expect("write");
        write_record(&mut out, b"user:1", 0, b"payload-1").await.expect("write");
        write_record(&mut out, b"", 1500, b"").await.expect("write");
        write_end(&mut out, 2).await.expect("write");
        out
    }

    async fn read_all(bytes: &[u8]) -> Result<Vec<Record>> {
        let mut reader = Reader::open(bytes).await?;
        let mut records = Vec::new();
        while let Some(record) = reader.next().await? {
            records.push(record);
        }
        Ok(records)
    }

    #[tokio::test]
    async fn records_round_trip() {
        let records = read_all(&sample().await).await.expect("a backup");
        assert_eq!(
            records,
            [
                Record { key: b"user:1".to_vec(), ttl_ms: 0, payload: b"payload-1".to_vec() },
                Record { key: Vec::new(), ttl_ms: 1500, payload: Vec::new() },
            ]
        );
    }

    #[tokio::test]
    async fn anything_else_is_refused_with_what_is_wrong() {
        let whole = sample().await;
        let mut wrong_count = whole.clone();
        let last = wrong_count.len() - 1;
        wrong_count[last] = 3;
        let mut trailing = whole.clone();
        trailing.push(0);
        let mut unknown = MAGIC.to_vec();
        unknown.push(b'X');
        let mut huge = MAGIC.to_vec();
        huge.push(RECORD);
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        let cases: [(&[u8], &str); 9] = [
            (b"", "not a PaaSTech Redis backup"),
            (b"PTRED", "not a PaaSTech Redis backup"),
            (b"*1\r\n$4\r\nPING\r\n", "not a PaaSTech Redis backup"),
            (MAGIC, "cut short after 0 records"),
            (&whole[..whole.len() - 9], "cut short after 2 records"),
            (&whole[..20], "cut short after 0 records"),
            (&wrong_count, "counts 3 records but it holds 2"),
            (&trailing, "data after its end record"),
            (&unknown, "unknown record type 0x58"),
        ];
        for (input, expected) in cases {
            let err = read_all(input).await.expect_err(expected);
            assert!(matches!(err, Error::Invalid(_)), "{expected}: {err:?}");
            assert!(err.to_string().contains(expected), "{expected}: {err}");
        }
        let err = read_all(&huge).await.expect_err("too large");
        assert!(err.to_string().contains("more than redis allows"), "{err}");
    }
}
