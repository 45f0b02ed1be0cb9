//! Stream framing (RFC 3261 §18.3): a message ends Content-Length octets after the
//! empty line. `check` is mini-redis style: it looks at the buffered bytes and says
//! how long the next frame is, or that more must be read.

use crate::sip::message::parse::{header_end, unfold_lines};

#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete message of this many bytes.
    Message(usize),
    /// RFC 5626 §3.5.1 keep-alive ping (CRLFCRLF), `n` bytes: answer with one CRLF.
    Ping(usize),
    /// A stray CRLF (a client's pong or padding): skip `n` bytes.
    Skip(usize),
    /// Not enough bytes yet.
    Incomplete,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    #[error("no Content-Length on a stream transport")]
    MissingContentLength,
    #[error("malformed or repeated Content-Length")]
    BadContentLength,
}

pub fn check(buf: &[u8], max: usize) -> Result<Frame, FrameError> {
    if buf.starts_with(b"\r\n") {
        return Ok(if buf.starts_with(b"\r\n\r\n") {
            Frame::Ping(4)
        } else if b"\r\n\r\n".starts_with(buf) {
            Frame::Incomplete // maybe the start of a ping
        } else {
            Frame::Skip(2)
        });
    }
    let Some(end) = header_end(buf) else {
        return if buf.len() > max {
            Err(FrameError::TooLarge(max))
        } else {
            Ok(Frame::Incomplete)
        };
    };
    if end > max {
        return Err(FrameError::TooLarge(max));
    }
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut length = None;
    for line in unfold_lines(&head).iter().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim_end();
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l") {
            let v = value.trim();
            if length.is_some()
                || v.is_empty()
                || v.len() > 9
                || !v.bytes().all(|c| c.is_ascii_digit())
            {
                return Err(FrameError::BadContentLength);
            }
            length = Some(
                v.parse::<usize>()
                    .map_err(|_| FrameError::BadContentLength)?,
            );
        }
    }
    let total = end + length.ok_or(FrameError::MissingContentLength)?;
    if total > max {
        return Err(FrameError::TooLarge(max));
    }
    Ok(if buf.len() >= total {
        Frame::Message(total)
    } else {
        Frame::Incomplete
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nl: 5\r\n\r\nhello";

    #[test]
    fn frames_by_content_length() {
        assert_eq!(check(MSG, 1000), Ok(Frame::Message(MSG.len())));
        assert_eq!(check(&MSG[..MSG.len() - 1], 1000), Ok(Frame::Incomplete));
        assert_eq!(check(&MSG[..10], 1000), Ok(Frame::Incomplete));
        let mut two = MSG.to_vec();
        two.extend_from_slice(MSG);
        assert_eq!(check(&two, 1000), Ok(Frame::Message(MSG.len())));
    }

    #[test]
    fn keepalives() {
        assert_eq!(check(b"\r\n\r\n", 100), Ok(Frame::Ping(4)));
        assert_eq!(check(b"\r\n", 100), Ok(Frame::Incomplete));
        assert_eq!(check(b"\r\n\r", 100), Ok(Frame::Incomplete));
        assert_eq!(check(b"\r\nOPTIONS", 100), Ok(Frame::Skip(2)));
    }

    #[test]
    fn limits_and_errors() {
        assert_eq!(check(&[b'a'; 200], 100), Err(FrameError::TooLarge(100)));
        assert_eq!(
            check(b"OPTIONS sip:a@b SIP/2.0\r\nl: 500\r\n\r\n", 100),
            Err(FrameError::TooLarge(100))
        );
        assert_eq!(
            check(b"OPTIONS sip:a@b SIP/2.0\r\n\r\n", 100),
            Err(FrameError::MissingContentLength)
        );
        assert_eq!(
            check(b"X\r\nl: 1\r\nContent-Length: 1\r\n\r\nab", 100),
            Err(FrameError::BadContentLength)
        );
        assert_eq!(
            check(b"X\r\nl: -1\r\n\r\n", 100),
            Err(FrameError::BadContentLength)
        );
    }
}
