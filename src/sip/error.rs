//! Why a message could not be parsed; the text doubles as the reason in our 400 answers and as a metric label.

/// Why a message could not be parsed. The text is used as the reason phrase / Warning of our 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty message")]
    Empty,
    #[error("header section not terminated")]
    Truncated,
    #[error("bad start line")]
    BadStartLine,
    #[error("unsupported SIP version")]
    BadVersion,
    #[error("bad status code")]
    BadStatus,
    #[error("malformed header line")]
    BadHeaderLine,
    #[error("bad Content-Length")]
    BadContentLength,
    #[error("Content-Length larger than the message")]
    BodyTruncated,
    #[error("missing Via")]
    MissingVia,
    #[error("bad Via")]
    BadVia,
    #[error("missing Call-ID")]
    MissingCallId,
    #[error("missing or bad CSeq")]
    BadCSeq,
    #[error("CSeq method does not match request method")]
    CSeqMethodMismatch,
    #[error("missing From")]
    MissingFrom,
    #[error("missing To")]
    MissingTo,
    #[error("bad Max-Forwards")]
    BadMaxForwards,
    #[error("message too large")]
    TooLarge,
    #[error("more than one Call-ID")]
    DuplicateCallId,
    #[error("more than one CSeq")]
    DuplicateCSeq,
    #[error("more than one From")]
    DuplicateFrom,
    #[error("more than one To")]
    DuplicateTo,
    #[error("more than one Max-Forwards")]
    DuplicateMaxForwards,
    #[error("control character in the header section")]
    ControlByte,
    #[error("bad Call-ID")]
    BadCallId,
    #[error("bad From")]
    BadFrom,
    #[error("bad To")]
    BadTo,
    #[error("bad Request-URI")]
    BadRequestUri,
    #[error("unsupported URI scheme")]
    UnsupportedUriScheme,
    #[error("method too long")]
    MethodTooLong,
    #[error("header field too long")]
    FieldTooLong,
    #[error("header section too large")]
    HeadTooLarge,
    #[error("too many Via headers")]
    TooManyVias,
    #[error("Call-ID too long")]
    CallIdTooLong,
    #[error("bad Contact")]
    BadContact,
    #[error("bad Expires")]
    BadExpires,
}

impl ParseError {
    /// The status code of our answer to a request that fails so: 416 for a Request-URI scheme we do not route
    /// (RFC 3261 §16.3 step 2), 505 for another SIP version (§21.5.7), else 400.
    pub fn status(&self) -> u16 {
        match self {
            ParseError::UnsupportedUriScheme => 416,
            ParseError::BadVersion => 505,
            _ => 400,
        }
    }

    /// The reason text as a static str (used as reason phrase and in counters).
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::Empty => "empty message",
            ParseError::Truncated => "header section not terminated",
            ParseError::BadStartLine => "bad start line",
            ParseError::BadVersion => "unsupported SIP version",
            ParseError::BadStatus => "bad status code",
            ParseError::BadHeaderLine => "malformed header line",
            ParseError::BadContentLength => "bad Content-Length",
            ParseError::BodyTruncated => "Content-Length larger than the message",
            ParseError::MissingVia => "missing Via",
            ParseError::BadVia => "bad Via",
            ParseError::MissingCallId => "missing Call-ID",
            ParseError::BadCSeq => "missing or bad CSeq",
            ParseError::CSeqMethodMismatch => "CSeq method does not match request method",
            ParseError::MissingFrom => "missing From",
            ParseError::MissingTo => "missing To",
            ParseError::BadMaxForwards => "bad Max-Forwards",
            ParseError::TooLarge => "message too large",
            ParseError::DuplicateCallId => "more than one Call-ID",
            ParseError::DuplicateCSeq => "more than one CSeq",
            ParseError::DuplicateFrom => "more than one From",
            ParseError::DuplicateTo => "more than one To",
            ParseError::DuplicateMaxForwards => "more than one Max-Forwards",
            ParseError::ControlByte => "control character in the header section",
            ParseError::BadCallId => "bad Call-ID",
            ParseError::BadFrom => "bad From",
            ParseError::BadTo => "bad To",
            ParseError::BadRequestUri => "bad Request-URI",
            ParseError::UnsupportedUriScheme => "unsupported URI scheme",
            ParseError::MethodTooLong => "method too long",
            ParseError::FieldTooLong => "header field too long",
            ParseError::HeadTooLarge => "header section too large",
            ParseError::TooManyVias => "too many Via headers",
            ParseError::CallIdTooLong => "Call-ID too long",
            ParseError::BadContact => "bad Contact",
            ParseError::BadExpires => "bad Expires",
        }
    }
}
