//! The dialog table's key: Call-ID, both tags, and the leg (which pass of a spiral through this proxy). Pure
//! data, no table.

use bytes::{BufMut, Bytes, BytesMut};

/// Which of a dialog's passes through this proxy an entry is. A call between two phones through a PBX that
/// proxies rather than bridges (a registrar that Record-Routes and follows our Path) passes sipfront twice with the
/// same Call-ID and tags: phone -> sipfront -> PBX is one leg, PBX -> sipfront -> phone the other. Each leg has its
/// own phone side, so each is its own entry; our Record-Route token names the leg a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    /// The dialog-forming request came from a phone (and went to a backend).
    FromPhone,
    /// The dialog-forming request came from a backend (and went to a phone).
    FromPbx,
}

impl Leg {
    /// The leg of a dialog formed by a request that came from a backend (`true`) or not.
    pub fn of(from_backend: bool) -> Leg {
        if from_backend {
            Leg::FromPbx
        } else {
            Leg::FromPhone
        }
    }

    pub fn other(self) -> Leg {
        match self {
            Leg::FromPhone => Leg::FromPbx,
            Leg::FromPbx => Leg::FromPhone,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Leg::FromPhone => "from-phone",
            Leg::FromPbx => "from-pbx",
        }
    }
}

/// Call-ID plus both tags, and the [`Leg`]. The tags are stored in sorted order so a request from either side of
/// the call finds the same entry (the PBX's BYE has From and To swapped). A [`Leg::FromPbx`] key ends in a
/// marker byte; a [`Leg::FromPhone`] key has none, as every key had before legs existed, so records replicated
/// by an older node keep their meaning.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogId(pub(super) Bytes);

/// The last byte of a [`Leg::FromPbx`] key, after a third NUL (no SIP token contains one).
const FROM_PBX_MARK: u8 = b'p';

impl DialogId {
    /// The [`Leg::FromPhone`] entry of a dialog (the only one of a call that passes this proxy once).
    pub fn new(call_id: &[u8], tag_a: &[u8], tag_b: &[u8]) -> DialogId {
        DialogId::for_leg(call_id, tag_a, tag_b, Leg::FromPhone)
    }

    /// One leg's entry of a dialog.
    pub fn for_leg(call_id: &[u8], tag_a: &[u8], tag_b: &[u8], leg: Leg) -> DialogId {
        let (lo, hi) = if tag_a <= tag_b { (tag_a, tag_b) } else { (tag_b, tag_a) };
        let mut b = BytesMut::with_capacity(call_id.len() + lo.len() + hi.len() + 4);
        b.put_slice(call_id);
        b.put_u8(0);
        b.put_slice(lo);
        b.put_u8(0);
        b.put_slice(hi);
        if leg == Leg::FromPbx {
            b.put_u8(0);
            b.put_u8(FROM_PBX_MARK);
        }
        DialogId(b.freeze())
    }

    /// Which leg this entry is.
    pub fn leg(&self) -> Leg {
        // A FromPhone key has two NULs (SIP text has none), a FromPbx key a third before its marker.
        if memchr::memchr_iter(0, &self.0).count() == 3 && self.0.last() == Some(&FROM_PBX_MARK) {
            Leg::FromPbx
        } else {
            Leg::FromPhone
        }
    }

    /// The key as it travels between nodes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn from_bytes(b: Bytes) -> DialogId {
        DialogId(b)
    }

    /// The same dialog's other leg.
    pub fn twin(&self) -> DialogId {
        match self.leg() {
            Leg::FromPbx => DialogId(self.0.slice(..self.0.len() - 2)),
            Leg::FromPhone => {
                let mut b = BytesMut::with_capacity(self.0.len() + 2);
                b.put_slice(&self.0);
                b.put_u8(0);
                b.put_u8(FROM_PBX_MARK);
                DialogId(b.freeze())
            }
        }
    }

    /// The Call-ID part.
    pub fn call_id(&self) -> &[u8] {
        self.0.split(|c| *c == 0).next().unwrap_or(b"")
    }
}
