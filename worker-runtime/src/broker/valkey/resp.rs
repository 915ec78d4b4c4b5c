//! Stream reads straight from the bytes the server sent.
//!
//! A consumer's reads are most of what it receives, and redis-rs would first build a tree of
//! values out of each reply (a vector per array, a vector per string, through a general parser),
//! which the codec then takes apart again: about as much CPU per message as everything else the
//! raw client loop does. Here a [`ReplyScan`] follows a reply's headers as its bytes arrive
//! (string bodies are skipped by their length, and what was scanned is not scanned again when
//! more comes), and once it is complete its entries are cut out of the one buffer that holds the
//! reply: an entry's fields are slices of that buffer, not copies.
//!
//! Only RESP2 is spoken here (the connection never asks for RESP3): the replies of `XREADGROUP`,
//! and of the `AUTH` and `SELECT` that open the connection; every other command goes through
//! redis-rs.

use bytes::Bytes;

/// One entry of a stream read: its id and its fields, each a slice of the reply. `fields` is
/// `None` for an entry still pending but deleted from the stream.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct StreamEntry {
    pub id: Bytes,
    pub fields: Option<Vec<(Bytes, Bytes)>>,
}

/// How deep arrays may nest in a reply: an `XREADGROUP` reply nests five deep (the reply, a
/// stream, its entries, an entry, its fields).
const MAX_DEPTH: usize = 8;

/// The longest string a reply may hold: the server's own default limit on a string
/// (`proto-max-bulk-len`). A longer one is no reply this reader takes.
const MAX_STRING: usize = 512 * 1024 * 1024;

/// Follows one reply through a buffer that grows as its bytes arrive, and tells its length once
/// it is all there. Scanning resumes where it stopped: a reply read in many pieces is scanned
/// once, not once per piece.
#[derive(Default)]
pub(super) struct ReplyScan {
    /// Where the next value to scan starts.
    at: usize,
    /// For every array entered and not finished, how many of its values are still to come.
    open: Vec<u64>,
}

impl ReplyScan {
    /// The length of the reply at the start of `buffer`, `None` while part of it is still to
    /// come (call again with the same buffer grown). Fails on bytes that are no RESP2 reply.
    /// Once it returned a length it starts over, for the next reply.
    pub(super) fn complete(&mut self, buffer: &[u8]) -> Result<Option<usize>, String> {
        loop {
            let Some((kind, number, next)) = header_at(buffer, self.at)? else {
                return Ok(None);
            };
            match kind {
                b'+' | b'-' | b':' | b'_' => self.at = next,
                b'$' => match usize::try_from(number) {
                    // Nil.
                    Err(_) => self.at = next,
                    Ok(length) => {
                        let end = next + length;
                        match buffer.get(end..end + 2) {
                            None => return Ok(None),
                            Some(b"\r\n") => self.at = end + 2,
                            Some(_) => {
                                return Err(format!(
                                    "a string of {length} bytes does not end its line"
                                ));
                            }
                        }
                    }
                },
                b'*' => {
                    self.at = next;
                    if let Ok(count @ 1..) = u64::try_from(number) {
                        if self.open.len() == MAX_DEPTH {
                            return Err(format!("arrays nest deeper than {MAX_DEPTH}"));
                        }
                        self.open.push(count);
                        continue;
                    }
                }
                other => return Err(format!("unexpected reply type `{}`", other.escape_ascii())),
            }
            // A value ended: it counts for the array it is in, which may end with it.
            loop {
                match self.open.last_mut() {
                    None => {
                        let length = std::mem::take(&mut self.at);
                        return Ok(Some(length));
                    }
                    Some(left) if *left > 1 => {
                        *left -= 1;
                        break;
                    }
                    Some(_) => {
                        self.open.pop();
                    }
                }
            }
        }
    }
}

/// The length of the whole reply at the start of `buffer`, `None` while part of it is still to
/// come. Fails on bytes that are no RESP2 reply.
#[cfg(test)]
fn reply_len(buffer: &[u8]) -> Result<Option<usize>, String> {
    ReplyScan::default().complete(buffer)
}

/// Whether a complete reply is an error (`-CODE message`).
pub(super) fn is_error(reply: &[u8]) -> bool {
    reply.first() == Some(&b'-')
}

/// The entries of a complete `XREADGROUP` reply (as [`ReplyScan`] found it) that is no error:
/// `*-1` when the read timed out, else `[[stream, [[id, [name, value, …]], …]], …]`.
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
        // An entry takes more than 8 bytes: no count can reserve more than the reply holds.
        entries.reserve(count.min(cursor.reply.len() / 8));
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
        let end = self.at + length;
        if self.reply.len() < end + 2 {
            return Err("a string ends past the reply".into());
        }
        let body = self.reply.slice(self.at..end);
        self.at = end + 2;
        Ok(Some(body))
    }

    /// The type byte and number of the next header line (`*3`, `$-1`; 0 for `_`).
    fn header(&mut self) -> Result<(u8, i64), String> {
        let (kind, number, next) =
            header_at(&self.reply, self.at)?.ok_or("the reply ends early")?;
        self.at = next;
        Ok((kind, number))
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
    // The type byte, then CR: a line is at least two bytes before its LF.
    if newline < 2 || buffer[line_end - 1] != b'\r' {
        return Err("a line does not end with CRLF".into());
    }
    let text = &buffer[at + 1..line_end - 1];
    let number = match kind {
        b'$' | b'*' => parse_number(text)?,
        _ => 0,
    };
    Ok(Some((kind, number, line_end + 1)))
}

/// A length or count of a header line: `-1` for nil, else at most [`MAX_STRING`].
fn parse_number(text: &[u8]) -> Result<i64, String> {
    let bad = || format!("`{}` is no length up to {MAX_STRING}", text.escape_ascii());
    if text == b"-1" {
        return Ok(-1);
    }
    if text.is_empty() || text.len() > 10 {
        return Err(bad());
    }
    let number = text.iter().try_fold(0_i64, |number, &digit| {
        if digit.is_ascii_digit() {
            Ok(number * 10 + i64::from(digit - b'0'))
        } else {
            Err(bad())
        }
    })?;
    if number > MAX_STRING as i64 {
        return Err(bad());
    }
    Ok(number)
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
    fn a_scan_resumes_where_it_stopped_and_starts_over_after_a_reply() {
        let mut two = READ.to_vec();
        two.extend_from_slice(b"*-1\r\n");
        let mut scan = ReplyScan::default();
        let mut buffer = Vec::new();
        let mut found = None;
        for &byte in &two {
            buffer.push(byte);
            if let Some(length) = scan.complete(&buffer).expect("a reply") {
                found = Some(length);
                break;
            }
        }
        assert_eq!(found, Some(READ.len()));
        assert_eq!(scan.complete(&two[READ.len()..]), Ok(Some(5)));
    }

    #[test]
    fn no_bytes_make_the_reader_panic() {
        // Bytes drawn from what replies are made of, so that many get past the first header.
        let alphabet = b"*$+-:_\r\n0123-1abc";
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            let length = (state % 40) as usize;
            let bytes: Vec<u8> = (0..length)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    alphabet[(state % alphabet.len() as u64) as usize]
                })
                .collect();
            if let Ok(Some(length)) = reply_len(&bytes) {
                let _ = read_entries(Bytes::copy_from_slice(&bytes[..length]));
            }
        }
        assert!(reply_len(b"\r\n").is_err());
        assert!(reply_len(b"*1\r\n\r\n").is_err());
    }

    #[test]
    fn entries_with_nil_or_no_fields() {
        let reply = b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*0\r\n";
        assert_eq!(
            entries(reply),
            [StreamEntry {
                id: Bytes::from_static(b"1-0"),
                fields: Some(Vec::new()),
            }]
        );
        let nil_value = b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nn\r\n$-1\r\n";
        assert_eq!(reply_len(nil_value), Ok(Some(nil_value.len())));
        assert!(read_entries(Bytes::copy_from_slice(nil_value)).is_err());
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
            b"$536870913\r\n",
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
