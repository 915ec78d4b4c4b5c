//! Stream reads straight from the bytes the server sent.
//!
//! A consumer's reads are most of what it receives, and redis-rs would first build a tree of
//! values out of each reply (a vector per array, a vector per string, through a general parser),
//! which the codec then takes apart again: about as much CPU per message as everything else the
//! raw client loop does. Here a reply is checked complete in one pass over its headers (string
//! bodies are skipped by their length), and its entries are then cut out of the one buffer that
//! holds it: an entry's fields are slices of that buffer, not copies.
//!
//! Only RESP2 is spoken here (the connection never asks for RESP3), and only the replies of
//! `XREADGROUP`; everything else goes through redis-rs.

use bytes::Bytes;

/// One entry of a stream read: its id and its fields, each a slice of the reply. `fields` is
/// `None` for an entry still pending but deleted from the stream.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct StreamEntry {
    pub id: Bytes,
    pub fields: Option<Vec<(Bytes, Bytes)>>,
}

/// How deep arrays may nest in a reply: an `XREADGROUP` reply nests three deep.
const MAX_DEPTH: usize = 8;

/// The length of the whole reply at the start of `buffer`, `None` while part of it is still to
/// come. Fails on bytes that are no RESP2 reply.
pub(super) fn reply_len(buffer: &[u8]) -> Result<Option<usize>, String> {
    skip_value(buffer, 0, 0)
}

/// Whether a complete reply is an error (`-CODE message`).
pub(super) fn is_error(reply: &[u8]) -> bool {
    reply.first() == Some(&b'-')
}

/// The entries of a complete `XREADGROUP` reply that is no error: `*-1` when the read timed out,
/// else `[[stream, [[id, [name, value, …]], …]], …]`.
pub(super) fn read_entries(reply: Bytes) -> Result<Vec<StreamEntry>, String> {
    let mut cursor = Cursor { reply, at: 0 };
    let Some(streams) = cursor.array()? else {
        return Ok(Vec::new());
    };
    let mut entries = Vec::new();
    for _ in 0..streams {
        if cursor.array()? != Some(2) {
            return Err("a stream of the reply is not [name, entries]".into());
        }
        cursor.bulk()?;
        let count = cursor.array()?.ok_or("a stream's entries are nil")?;
        entries.reserve(count);
        for _ in 0..count {
            entries.push(cursor.entry()?);
        }
    }
    Ok(entries)
}

/// Reads a complete reply, front to back.
struct Cursor {
    reply: Bytes,
    at: usize,
}

impl Cursor {
    /// The next entry: `[id, [name, value, …]]`, or `[id, nil]`.
    fn entry(&mut self) -> Result<StreamEntry, String> {
        if self.array()? != Some(2) {
            return Err("an entry is not [id, fields]".into());
        }
        let id = self.bulk()?.ok_or("an entry has a nil id")?;
        let fields = match self.array()? {
            None => None,
            Some(flat) if flat % 2 == 1 => {
                return Err(format!("an entry has {flat} field names and values"));
            }
            Some(flat) => {
                let mut fields = Vec::with_capacity(flat / 2);
                for _ in 0..flat / 2 {
                    let name = self.bulk()?.ok_or("a field name is nil")?;
                    let value = self.bulk()?.ok_or("a field value is nil")?;
                    fields.push((name, value));
                }
                Some(fields)
            }
        };
        Ok(StreamEntry { id, fields })
    }

    /// The length of the array that comes next, `None` for a nil one.
    fn array(&mut self) -> Result<Option<usize>, String> {
        match self.header()? {
            (b'*', length) => Ok(usize::try_from(length).ok()),
            (b'_', _) => Ok(None),
            (kind, _) => Err(format!("expected an array, got `{}`", kind as char)),
        }
    }

    /// The bulk string that comes next, `None` for a nil one.
    fn bulk(&mut self) -> Result<Option<Bytes>, String> {
        let length = match self.header()? {
            (b'$', length) => length,
            (b'_', _) => return Ok(None),
            (kind, _) => return Err(format!("expected a string, got `{}`", kind as char)),
        };
        let Ok(length) = usize::try_from(length) else {
            return Ok(None);
        };
        // `reply_len` checked the body and its line end are there.
        let body = self.reply.slice(self.at..self.at + length);
        self.at += length + 2;
        Ok(Some(body))
    }

    /// The type byte and number of the next header line (`*3`, `$-1`; 0 for `_`).
    fn header(&mut self) -> Result<(u8, i64), String> {
        let (kind, number, next) = header_at(&self.reply, self.at)?
            .ok_or("the reply ends early, though it was checked complete")?;
        self.at = next;
        Ok((kind, number))
    }
}

/// Where the value at `at` ends, or `None` if the buffer ends first.
fn skip_value(buffer: &[u8], at: usize, depth: usize) -> Result<Option<usize>, String> {
    let Some((kind, number, mut next)) = header_at(buffer, at)? else {
        return Ok(None);
    };
    match kind {
        b'+' | b'-' | b':' | b'_' => Ok(Some(next)),
        b'$' => {
            let Ok(length) = usize::try_from(number) else {
                return Ok(Some(next));
            };
            let end = next + length;
            match buffer.get(end..end + 2) {
                None => Ok(None),
                Some(b"\r\n") => Ok(Some(end + 2)),
                Some(_) => Err(format!("a string of {length} bytes does not end its line")),
            }
        }
        b'*' => {
            if depth == MAX_DEPTH {
                return Err(format!("arrays nest deeper than {MAX_DEPTH}"));
            }
            for _ in 0..number.max(0) {
                match skip_value(buffer, next, depth + 1)? {
                    Some(end) => next = end,
                    None => return Ok(None),
                }
            }
            Ok(Some(next))
        }
        other => Err(format!("unexpected reply type `{}`", other.escape_ascii())),
    }
}

/// The header line at `at`: its type byte, its number (a length or count; 0 where there is
/// none), and where the line after it starts. `None` if the line is not all there yet.
fn header_at(buffer: &[u8], at: usize) -> Result<Option<(u8, i64, usize)>, String> {
    let Some(&kind) = buffer.get(at) else {
        return Ok(None);
    };
    let Some(newline) = buffer[at..].iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let line_end = at + newline;
    if newline < 1 || buffer[line_end - 1] != b'\r' {
        return Err("a line does not end with CRLF".into());
    }
    let text = &buffer[at + 1..line_end - 1];
    let number = match kind {
        b'$' | b'*' => parse_number(text)?,
        _ => 0,
    };
    Ok(Some((kind, number, line_end + 1)))
}

/// A length or count of a header line: `-1` for nil, else at most a 32-bit length.
fn parse_number(text: &[u8]) -> Result<i64, String> {
    let bad = || format!("`{}` is no length", text.escape_ascii());
    if text == b"-1" {
        return Ok(-1);
    }
    if text.is_empty() || text.len() > 10 {
        return Err(bad());
    }
    text.iter().try_fold(0_i64, |number, &digit| {
        if digit.is_ascii_digit() {
            Ok(number * 10 + i64::from(digit - b'0'))
        } else {
            Err(bad())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: &[u8] = b"*1\r\n*2\r\n$6\r\nstream\r\n*2\r\n\
        *2\r\n$3\r\n1-0\r\n*4\r\n$7\r\npayload\r\n$5\r\nhe\r\no\r\n$9\r\npublished\r\n$2\r\n17\r\n\
        *2\r\n$3\r\n2-0\r\n*-1\r\n";

    fn entries(reply: &[u8]) -> Vec<StreamEntry> {
        assert_eq!(reply_len(reply), Ok(Some(reply.len())));
        read_entries(Bytes::copy_from_slice(reply)).expect("a read reply")
    }

    #[test]
    fn a_read_is_cut_into_entries_with_binary_fields() {
        let read = entries(READ);
        assert_eq!(
            read,
            [
                StreamEntry {
                    id: Bytes::from_static(b"1-0"),
                    fields: Some(vec![
                        (
                            Bytes::from_static(b"payload"),
                            Bytes::from_static(b"he\r\no")
                        ),
                        (Bytes::from_static(b"published"), Bytes::from_static(b"17")),
                    ]),
                },
                StreamEntry {
                    id: Bytes::from_static(b"2-0"),
                    fields: None,
                },
            ]
        );
    }

    #[test]
    fn a_timed_out_read_has_no_entries() {
        assert!(entries(b"*-1\r\n").is_empty());
        assert!(entries(b"_\r\n").is_empty());
        assert!(entries(b"*1\r\n*2\r\n$1\r\ns\r\n*0\r\n").is_empty());
    }

    #[test]
    fn a_reply_is_complete_only_once_its_last_byte_is_in() {
        for cut in 0..READ.len() {
            assert_eq!(reply_len(&READ[..cut]), Ok(None), "cut at {cut}");
        }
        let mut more = READ.to_vec();
        more.extend_from_slice(b"+OK\r\n");
        assert_eq!(reply_len(&more), Ok(Some(READ.len())));
    }

    #[test]
    fn errors_are_told_apart() {
        let error = b"-NOGROUP No such key\r\n";
        assert_eq!(reply_len(error), Ok(Some(error.len())));
        assert!(is_error(error));
        assert!(!is_error(READ));
    }

    #[test]
    fn what_is_no_reply_fails_instead_of_being_guessed() {
        for bad in [
            &b"?1\r\n"[..],
            b"*1\n",
            b"$x\r\n",
            b"$99999999999\r\n",
            b"$2\r\nabcd\r\n",
        ] {
            assert!(reply_len(bad).is_err(), "{}", bad.escape_ascii());
        }
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1);
        assert!(reply_len(deep.as_bytes()).is_err());
        for wrong_shape in [
            &b"+OK\r\n"[..],
            b"*1\r\n$1\r\ns\r\n",
            b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*1\r\n$1\r\nn\r\n",
        ] {
            assert_eq!(reply_len(wrong_shape), Ok(Some(wrong_shape.len())));
            assert!(
                read_entries(Bytes::copy_from_slice(wrong_shape)).is_err(),
                "{}",
                wrong_shape.escape_ascii()
            );
        }
    }
}
