//! Route patterns (`9.!`, `1XXX`, `+1[2-9]XXXXXXXXX`): parsing, matching and the
//! specificity order. The syntax is documented in `docs/dial-plan.md`.

use std::cmp::Ordering;
use std::fmt;

/// Most positions (single-character elements, not counting `!`) in one pattern. The
/// longest E.164 number has 15 digits; 32 leaves room for access codes and keeps the
/// exact specificity arithmetic within `u128` (10^32 < 2^107).
pub const MAX_POSITIONS: usize = 32;

/// Bit of a dialable character in a position's set: `0`–`9` are bits 0–9, `*` 10,
/// `#` 11, `+` 12. Anything else is not dialable and matches nothing.
fn bit(c: u8) -> Option<u16> {
    match c {
        b'0'..=b'9' => Some(1 << (c - b'0')),
        b'*' => Some(1 << 10),
        b'#' => Some(1 << 11),
        b'+' => Some(1 << 12),
        _ => None,
    }
}

const ANY_DIGIT: u16 = 0x3ff;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("pattern is empty")]
    Empty,
    #[error("invalid character {ch:?} at position {pos}")]
    InvalidChar { ch: char, pos: usize },
    #[error("'+' is only allowed as the first character (position {pos})")]
    PlusNotLeading { pos: usize },
    #[error("'[' at position {pos} is never closed")]
    UnclosedBracket { pos: usize },
    #[error("']' at position {pos} has no matching '['")]
    UnopenedBracket { pos: usize },
    #[error("empty set '[]' at position {pos}")]
    EmptySet { pos: usize },
    #[error("bad range {range:?} at position {pos}: ranges go from a lower to a higher digit, e.g. [2-9]")]
    BadRange { range: String, pos: usize },
    #[error("'!' must be the last character (position {pos})")]
    BangNotLast { pos: usize },
    #[error("more than one '.' (position {pos})")]
    MultipleDots { pos: usize },
    #[error("'.' must be followed by the digits to send")]
    DotAtEnd,
    #[error("more than {MAX_POSITIONS} digit positions")]
    TooLong,
}

/// A parsed route pattern. Each position matches exactly one dialed character; an
/// optional trailing `!` matches one or more digits; an optional `.` between
/// positions marks the end of the prefix that is stripped before sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    text: String,
    /// One set of accepted characters per position (bits as in [`bit`]).
    positions: Vec<u16>,
    /// Number of positions before the `.` (0 when there is no `.`).
    pre_dot: usize,
    /// Ends with `!`.
    bang: bool,
}

/// How a dialed string matched a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchInfo {
    /// Leading characters of the dialed string before the pattern's `.` (stripped).
    pub pre_dot_len: usize,
    /// Digits matched by `!` (0 for a pattern without `!`).
    pub wildcard_len: usize,
}

impl MatchInfo {
    /// The dialed string with the part before `.` removed (what the pattern sends).
    pub fn sent<'a>(&self, dialed: &'a str) -> &'a str {
        // every matched character is ASCII, so this is a char boundary
        &dialed[self.pre_dot_len..]
    }
}

impl RoutePattern {
    pub fn parse(text: &str) -> Result<RoutePattern, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        let b = text.as_bytes();
        let mut positions = Vec::new();
        let mut dot: Option<usize> = None;
        let mut bang = false;
        let mut i = 0;
        // `pos` in errors is the 0-based character index; all valid characters are
        // ASCII, and the first non-ASCII one is reported as invalid, so byte index ==
        // character index up to there.
        while i < b.len() {
            let c = b[i];
            if bang {
                return Err(PatternError::BangNotLast { pos: i - 1 });
            }
            match c {
                b'0'..=b'9' | b'*' | b'#' => positions.push(bit(c).unwrap_or(0)),
                b'+' if i == 0 => positions.push(bit(c).unwrap_or(0)),
                b'+' => return Err(PatternError::PlusNotLeading { pos: i }),
                b'X' => positions.push(ANY_DIGIT),
                b'!' => bang = true,
                b'.' => {
                    if dot.is_some() {
                        return Err(PatternError::MultipleDots { pos: i });
                    }
                    dot = Some(positions.len());
                }
                b'[' => {
                    let (set, end) = parse_set(text, i)?;
                    positions.push(set);
                    i = end;
                }
                b']' => return Err(PatternError::UnopenedBracket { pos: i }),
                _ => {
                    return Err(PatternError::InvalidChar {
                        ch: text[i..].chars().next().unwrap_or('?'),
                        pos: i,
                    })
                }
            }
            if positions.len() > MAX_POSITIONS {
                return Err(PatternError::TooLong);
            }
            i += 1;
        }
        if dot == Some(positions.len()) && !bang {
            return Err(PatternError::DotAtEnd);
        }
        Ok(RoutePattern {
            text: text.to_string(),
            positions,
            pre_dot: dot.unwrap_or(0),
            bang,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern ends with `!` (matches numbers of unbounded length).
    pub fn is_open(&self) -> bool {
        self.bang
    }

    /// Characters before the `.` (stripped from every match).
    pub fn pre_dot_len(&self) -> usize {
        self.pre_dot
    }

    /// Shortest dialed string this pattern matches.
    pub fn min_len(&self) -> usize {
        self.positions.len() + usize::from(self.bang)
    }

    /// Matches the whole dialed string: one character per position, then (for `!`)
    /// one or more digits `0`–`9`.
    pub fn matches(&self, dialed: &str) -> Option<MatchInfo> {
        let d = dialed.as_bytes();
        let n = self.positions.len();
        if self.bang {
            if d.len() <= n || !d[n..].iter().all(u8::is_ascii_digit) {
                return None;
            }
        } else if d.len() != n {
            return None;
        }
        let fixed_ok = self
            .positions
            .iter()
            .zip(d)
            .all(|(set, &c)| bit(c).is_some_and(|b| set & b != 0));
        fixed_ok.then(|| MatchInfo {
            pre_dot_len: self.pre_dot,
            wildcard_len: d.len() - n,
        })
    }

    /// The key that orders patterns from most to least specific (see
    /// [`Specificity`]).
    pub fn specificity(&self) -> Specificity {
        Specificity {
            open: self.bang,
            count: self
                .positions
                .iter()
                .map(|s| u128::from(s.count_ones()))
                .product(),
            positions: self.positions.len() as u32,
            literals: self
                .positions
                .iter()
                .filter(|s| s.count_ones() == 1)
                .count() as u32,
        }
    }

    /// Whether both patterns match exactly the same dialed strings (the `.` may
    /// differ).
    pub fn same_strings(&self, other: &RoutePattern) -> bool {
        self.bang == other.bang && self.positions == other.positions
    }
}

impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parses `[…]` starting at byte `start` (the `[`): digits and `a-b` ranges of
/// digits. Returns the set and the index of the closing `]`.
fn parse_set(text: &str, start: usize) -> Result<(u16, usize), PatternError> {
    let b = text.as_bytes();
    let mut set = 0u16;
    let mut i = start + 1;
    loop {
        let Some(&c) = b.get(i) else {
            return Err(PatternError::UnclosedBracket { pos: start });
        };
        match c {
            b']' => {
                if set == 0 {
                    return Err(PatternError::EmptySet { pos: start });
                }
                return Ok((set, i));
            }
            b'0'..=b'9' => {
                if b.get(i + 1) == Some(&b'-') {
                    match b.get(i + 2) {
                        Some(&hi @ b'0'..=b'9') if hi >= c => {
                            for d in c..=hi {
                                set |= 1 << (d - b'0');
                            }
                            i += 3;
                        }
                        Some(&hi @ b'0'..=b'9') => {
                            return Err(PatternError::BadRange {
                                range: format!("{}-{}", c as char, hi as char),
                                pos: i,
                            })
                        }
                        _ => {
                            return Err(PatternError::BadRange {
                                range: text[i..(i + 2).min(text.len())].to_string(),
                                pos: i,
                            })
                        }
                    }
                } else {
                    set |= 1 << (c - b'0');
                    i += 1;
                }
            }
            b'[' => return Err(PatternError::UnclosedBracket { pos: start }),
            b'-' => {
                return Err(PatternError::BadRange {
                    range: "-".into(),
                    pos: i,
                })
            }
            _ => {
                return Err(PatternError::InvalidChar {
                    ch: text[i..].chars().next().unwrap_or('?'),
                    pos: i,
                })
            }
        }
    }
}

/// Specificity of a pattern; `Less` is **more** specific. A pattern that matches
/// fewer dialed strings is more specific:
///
/// 1. A pattern without `!` (finitely many strings) beats one with `!`.
/// 2. Without `!`: fewer strings wins — the product of the number of alternatives
///    per position (`1XXX` matches 1,000, `1[2-4]XX` 300, `1000` one).
/// 3. With `!`: both match infinitely many strings, so compare how many strings of
///    the *same length* each matches — the product per position divided by
///    10^positions (`12!` matches 1 % of the strings of any length ≥ 3, `1!` 10 %);
///    on a tie, more positions wins (`1X!` needs three digits, `1!` two: `1X!`
///    matches a subset of `1!`).
/// 4. Then more literal positions (single-character ones) wins.
///
/// Remaining ties are broken by the order of the routes in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Specificity {
    pub open: bool,
    /// Product of the alternatives per position (≤ 10^32).
    pub count: u128,
    pub positions: u32,
    pub literals: u32,
}

impl Ord for Specificity {
    fn cmp(&self, other: &Self) -> Ordering {
        let by_count = if !self.open {
            self.count.cmp(&other.count)
        } else {
            // count / 10^positions, compared exactly: scale the one with fewer
            // positions. count ≤ 10^positions ≤ 10^32, so no overflow.
            let (a, b) = (self.positions, other.positions);
            if a <= b {
                (self.count * 10u128.pow(b - a)).cmp(&other.count)
            } else {
                self.count.cmp(&(other.count * 10u128.pow(a - b)))
            }
        };
        self.open
            .cmp(&other.open)
            .then(by_count)
            .then(other.positions.cmp(&self.positions))
            .then(other.literals.cmp(&self.literals))
    }
}

impl PartialOrd for Specificity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
