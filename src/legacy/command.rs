//! Parsing the legacy line protocol's requests (docs/api.md "Legacy line
//! protocol"): one line, words separated by spaces, into a [`Command`] or the
//! protocol's own error message.

/// One request line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// An empty line: `OK `.
    Empty,
    Echo(String),
    Search(Vec<u32>),
    Begin,
    Insert {
        id: u32,
        hashes: Vec<u32>,
    },
    Commit,
    Rollback,
    /// `optimize` and `cleanup`: no-ops kept for old clients (they need an
    /// open transaction).
    Noop,
    Get(String),
    Set {
        name: String,
        value: String,
    },
}

/// Why a line is not a command: the reply's message after `ERR `.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown command")]
    Unknown,
    #[error("expected one argument")]
    OneArgument,
    #[error("expected two arguments")]
    TwoArguments,
    #[error("empty fingerprint")]
    EmptyFingerprint,
    #[error("invalid fingerprint")]
    InvalidFingerprint,
    #[error("invalid document id")]
    InvalidId,
    /// `insert` outside a transaction is refused before its arguments are
    /// looked at (as fpindex does).
    #[error("not in transaction")]
    NotInTransaction,
}

/// Parses `line` (without its `\n`; a trailing `\r` is ignored).
/// `in_transaction` decides what a misplaced `insert` is told.
pub fn parse(line: &str, in_transaction: bool) -> Result<Command, ParseError> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let words: Vec<&str> = line.split(' ').filter(|w| !w.is_empty()).collect();
    let Some((&name, args)) = words.split_first() else {
        return Ok(Command::Empty);
    };
    match name {
        "echo" => Ok(Command::Echo(args.join(" "))),
        "search" => match args {
            [fp] => Ok(Command::Search(fingerprint(fp)?)),
            _ => Err(ParseError::OneArgument),
        },
        "begin" => Ok(Command::Begin),
        "insert" => {
            if !in_transaction {
                return Err(ParseError::NotInTransaction);
            }
            let [id, fp] = args else {
                return Err(ParseError::TwoArguments);
            };
            let id = id.parse::<u32>().map_err(|_| ParseError::InvalidId)?;
            Ok(Command::Insert {
                id,
                hashes: fingerprint(fp)?,
            })
        }
        "commit" => Ok(Command::Commit),
        "rollback" => Ok(Command::Rollback),
        "optimize" | "cleanup" => Ok(Command::Noop),
        "get" => match args {
            ["attribute", name] | [name] => Ok(Command::Get((*name).to_string())),
            _ => Err(ParseError::OneArgument),
        },
        "set" => match args {
            ["attribute", name, value] | [name, value] => Ok(Command::Set {
                name: (*name).to_string(),
                value: (*value).to_string(),
            }),
            _ => Err(ParseError::TwoArguments),
        },
        _ => Err(ParseError::Unknown),
    }
}

/// Comma-separated integers, each read as a signed 64-bit number and cut to
/// its low 32 bits (clients send hashes in their signed form: `-1` is
/// 4294967295).
pub fn fingerprint(text: &str) -> Result<Vec<u32>, ParseError> {
    if text.is_empty() {
        return Err(ParseError::EmptyFingerprint);
    }
    text.split(',')
        .map(|t| {
            t.parse::<i64>()
                .map(|v| v as u32)
                .map_err(|_| ParseError::InvalidFingerprint)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn commands_and_their_arguments() {
        assert_eq!(parse("", false), Ok(Command::Empty));
        assert_eq!(parse("\r", false), Ok(Command::Empty));
        assert_eq!(parse("   ", false), Ok(Command::Empty));
        assert_eq!(
            parse("echo  hello   world\r", false),
            Ok(Command::Echo("hello world".into()))
        );
        assert_eq!(parse("echo", false), Ok(Command::Echo(String::new())));
        assert_eq!(
            parse("search 1,-1,4294967297", false),
            Ok(Command::Search(vec![1, u32::MAX, 1]))
        );
        assert_eq!(parse("search", false), Err(ParseError::OneArgument));
        assert_eq!(parse("search 1 2", false), Err(ParseError::OneArgument));
        assert_eq!(
            parse("search 1,x", false),
            Err(ParseError::InvalidFingerprint)
        );
        assert_eq!(
            parse("search 1,,2", false),
            Err(ParseError::InvalidFingerprint)
        );
        assert_eq!(
            parse("search 99999999999999999999", false),
            Err(ParseError::InvalidFingerprint)
        );
        assert_eq!(
            parse("insert 1 1,2", false),
            Err(ParseError::NotInTransaction)
        );
        assert_eq!(
            parse("insert 7 5,6", true),
            Ok(Command::Insert {
                id: 7,
                hashes: vec![5, 6]
            })
        );
        assert_eq!(parse("insert 7", true), Err(ParseError::TwoArguments));
        assert_eq!(parse("insert -7 1", true), Err(ParseError::InvalidId));
        assert_eq!(
            parse("insert 4294967296 1", true),
            Err(ParseError::InvalidId)
        );
        assert_eq!(parse("get a", false), Ok(Command::Get("a".into())));
        assert_eq!(
            parse("get attribute a", false),
            Ok(Command::Get("a".into()))
        );
        assert_eq!(parse("get", false), Err(ParseError::OneArgument));
        assert_eq!(parse("get a b", false), Err(ParseError::OneArgument));
        assert_eq!(
            parse("set attribute a 1", false),
            Ok(Command::Set {
                name: "a".into(),
                value: "1".into()
            })
        );
        assert_eq!(parse("set a", false), Err(ParseError::TwoArguments));
        assert_eq!(parse("optimize", true), Ok(Command::Noop));
        assert_eq!(parse("cleanup", false), Ok(Command::Noop));
        assert_eq!(parse("SEARCH 1", false), Err(ParseError::Unknown));
        assert_eq!(
            ParseError::EmptyFingerprint.to_string(),
            "empty fingerprint"
        );
    }

    #[test]
    fn an_empty_fingerprint_is_named() {
        assert_eq!(fingerprint(""), Err(ParseError::EmptyFingerprint));
        assert_eq!(fingerprint("-2147483648"), Ok(vec![1 << 31]));
    }
}
