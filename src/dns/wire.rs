//! DNS messages as bytes: reading a query's header, question and OPT record, and
//! writing a response with name compression straight into a reused buffer.
//!
//! This is the fast path's whole view of the wire (RFC 1035 §4, RFC 6891). It reads only
//! the plain shape of a query (one question, nothing but an OPT in the additional
//! section); anything else is left to hickory's full parser. Writing allocates nothing
//! once a thread's [`Scratch`] has grown to its working size.

/// A DNS message header (RFC 1035 §4.1.1).
pub const HEADER_LEN: usize = 12;
/// An OPT record without options (RFC 6891 §6.1.2).
pub const OPT_LEN: usize = 11;
/// Without EDNS a UDP response may have 512 bytes (RFC 1035 §4.2.1).
pub const CLASSIC_UDP_LIMIT: usize = 512;
/// The most a UDP response carries whatever the client offers: larger ones fragment,
/// and fragments get lost (DNS flag day 2020 settled on less; 4096 is BIND's and
/// hickory's ceiling).
pub const MAX_UDP_RESPONSE: usize = 4096;
/// Longest domain name on the wire (RFC 1035 §2.3.4).
const MAX_NAME_LEN: usize = 255;
/// Most labels a name of 255 bytes can have, the root not counted.
const MAX_LABELS: usize = 127;
/// Where the question's name starts in every message: right after the header.
const QUESTION_NAME_OFFSET: u16 = HEADER_LEN as u16;
/// A compression pointer holds a 14-bit offset (RFC 1035 §4.1.4).
const MAX_POINTER_OFFSET: usize = 0x3FFF;

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_OPT: u16 = 41;
pub const CLASS_IN: u16 = 1;

/// Header flag bits (RFC 1035 §4.1.1, RFC 2535 §6.1 for CD).
const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_CD: u16 = 0x0010;
const OPCODE_MASK: u16 = 0x7800;
/// The DO bit in an OPT record's TTL field (RFC 3225 §3).
const EDNS_DO: u32 = 0x8000;

/// A domain name in wire form, lowercase, with where each label starts.
#[derive(Clone)]
pub struct WireName {
    bytes: [u8; MAX_NAME_LEN],
    len: u8,
    starts: [u8; MAX_LABELS],
    labels: u8,
}

impl WireName {
    /// Reads an uncompressed name at the start of `input`; returns it and the bytes it
    /// took. `None` for a compression pointer, a bad label or a name over 255 bytes.
    pub fn read(input: &[u8]) -> Option<(WireName, usize)> {
        let mut name = WireName {
            bytes: [0; MAX_NAME_LEN],
            len: 0,
            starts: [0; MAX_LABELS],
            labels: 0,
        };
        let mut at = 0;
        loop {
            let len = usize::from(*input.get(at)?);
            if len == 0 {
                break;
            }
            // A pointer (0xC0) or a reserved label type (0x40, 0x80).
            if len > 63 || at + 1 + len + 1 > MAX_NAME_LEN {
                return None;
            }
            let label = input.get(at + 1..at + 1 + len)?;
            name.starts[usize::from(name.labels)] = at as u8;
            name.labels += 1;
            name.bytes[at] = len as u8;
            for (slot, byte) in name.bytes[at + 1..].iter_mut().zip(label) {
                *slot = byte.to_ascii_lowercase();
            }
            at += 1 + len;
        }
        name.bytes[at] = 0;
        name.len = (at + 1) as u8;
        Some((name, at + 1))
    }

    /// The record type of a message's first question and the offset where that
    /// question ends; `None` when the message has no question or it cannot be read.
    pub fn first_question(message: &[u8]) -> Option<(u16, usize)> {
        let header = message.get(..HEADER_LEN)?;
        if u16::from_be_bytes([header[4], header[5]]) == 0 {
            return None;
        }
        // A question's name is never compressed.
        let (_, used) = WireName::read(message.get(HEADER_LEN..)?)?;
        let at = HEADER_LEN + used;
        let fixed = message.get(at..at + 4)?;
        Some((u16::from_be_bytes([fixed[0], fixed[1]]), at + 4))
    }

    /// Reads a name from wire bytes that must hold exactly one uncompressed name.
    pub fn from_wire(wire: &[u8]) -> Option<WireName> {
        WireName::read(wire).and_then(|(name, used)| (used == wire.len()).then_some(name))
    }

    /// The name in wire form, root label included.
    pub fn as_wire(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Labels, not counting the root.
    pub fn label_count(&self) -> usize {
        usize::from(self.labels)
    }

    /// The `index`th label from the left, without its length byte.
    pub fn label(&self, index: usize) -> &[u8] {
        let start = usize::from(self.starts[index]);
        let len = usize::from(self.bytes[start]);
        &self.bytes[start + 1..start + 1 + len]
    }

    /// Whether this name is `zone` or below it (`zone` in lowercase wire form).
    pub fn is_within(&self, zone: &[u8]) -> bool {
        let wire = self.as_wire();
        let Some(cut) = wire.len().checked_sub(zone.len()) else {
            return false;
        };
        // The cut must fall on a label boundary; the root (`zone` of one byte) is above all.
        wire.ends_with(zone)
            && (cut == 0
                || zone.len() == 1
                || self.starts[..self.label_count()].contains(&(cut as u8)))
    }
}

/// The name as text (`web.svc.internal.`), for log messages.
impl std::fmt::Display for WireName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.label_count() == 0 {
            return f.write_str(".");
        }
        for index in 0..self.label_count() {
            write!(f, "{}.", String::from_utf8_lossy(self.label(index)))?;
        }
        Ok(())
    }
}

/// What EDNS a query asked for (RFC 6891 §6.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub payload: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// A query of the plain shape the fast path answers.
pub struct Query<'p> {
    pub id: u16,
    flags: u16,
    pub name: WireName,
    /// The question as the client sent it (name in its case, type, class).
    pub question: &'p [u8],
    pub record_type: u16,
    pub class: u16,
    pub edns: Option<Edns>,
}

/// What a received packet is, as far as the fast path cares.
// A query is parsed once per packet on the stack; boxing it would allocate per query.
#[allow(clippy::large_enum_variant)]
pub enum Packet<'p> {
    /// A standard query with one question and at most an OPT record.
    Query(Query<'p>),
    /// Not to be answered at all: too short for a header, or a response (QR set).
    Ignore,
    /// Any other shape (other opcodes, several questions, TSIG, compressed names,
    /// trailing bytes): hickory's full parser decides.
    Other,
}

impl<'p> Packet<'p> {
    pub fn parse(packet: &'p [u8]) -> Packet<'p> {
        if packet.len() < HEADER_LEN {
            return Packet::Ignore;
        }
        let flags = be16(packet, 2);
        if flags & FLAG_QR != 0 {
            return Packet::Ignore;
        }
        let counts = [
            be16(packet, 4),
            be16(packet, 6),
            be16(packet, 8),
            be16(packet, 10),
        ];
        if flags & OPCODE_MASK != 0 || counts[0] != 1 || counts[1] != 0 || counts[2] != 0 {
            return Packet::Other;
        }
        match Query::read(packet, flags, 0, counts[3]) {
            Some((query, _)) => Packet::Query(query),
            None => Packet::Other,
        }
    }
}

impl<'p> Query<'p> {
    /// Reads the question and what follows it: for `authorities` = 1 an SOA (IXFR's
    /// client version, whose serial is returned), for `additionals` = 1 an OPT record.
    fn read(
        packet: &'p [u8],
        flags: u16,
        authorities: u16,
        additionals: u16,
    ) -> Option<(Query<'p>, Option<u32>)> {
        let (name, name_len) = WireName::read(&packet[HEADER_LEN..])?;
        let question_end = HEADER_LEN + name_len + 4;
        let question = packet.get(HEADER_LEN..question_end)?;
        let mut rest = &packet[question_end..];
        let serial = match authorities {
            0 => None,
            1 => Some(read_soa_serial(&mut rest)?),
            _ => return None,
        };
        let edns = match additionals {
            0 => None,
            1 => Some(read_opt(&mut rest)?),
            _ => return None,
        };
        if !rest.is_empty() {
            return None;
        }
        let query = Query {
            id: be16(packet, 0),
            flags,
            record_type: be16(question, name_len),
            class: be16(question, name_len + 2),
            name,
            question,
            edns,
        };
        Some((query, serial))
    }

    /// Whether the client asked for recursion (RD), echoed in the response.
    fn echoed_flags(&self) -> u16 {
        self.flags & (FLAG_RD | FLAG_CD)
    }
}

/// A zone transfer request as secondaries send it (RFC 5936 §2.2, RFC 1995 §3): one
/// question, for IXFR the client's SOA in the authority section, at most an OPT record.
/// Anything else (TSIG, several questions) is left to hickory's parser.
pub struct TransferQuery<'p> {
    pub query: Query<'p>,
    /// IXFR: the serial of the SOA the client sent, the version it has.
    pub client_serial: Option<u32>,
}

impl<'p> TransferQuery<'p> {
    pub fn parse(packet: &'p [u8]) -> Option<TransferQuery<'p>> {
        let header = packet.get(..HEADER_LEN)?;
        let flags = be16(header, 2);
        let counts = [
            be16(header, 4),
            be16(header, 6),
            be16(header, 8),
            be16(header, 10),
        ];
        if flags & (FLAG_QR | OPCODE_MASK) != 0 || counts[0] != 1 || counts[1] != 0 {
            return None;
        }
        let (query, client_serial) = Query::read(packet, flags, counts[2], counts[3])?;
        Some(TransferQuery {
            query,
            client_serial,
        })
    }
}

/// Reads an SOA record at the start of `input` and returns its serial. Its names may be
/// compressed; only their extent matters here.
fn read_soa_serial(input: &mut &[u8]) -> Option<u32> {
    let name_len = compressed_name_len(input)?;
    let fixed = input.get(name_len..name_len + 10)?;
    if be16(fixed, 0) != TYPE_SOA {
        return None;
    }
    let rdata_len = usize::from(be16(fixed, 8));
    let rdata = input.get(name_len + 10..name_len + 10 + rdata_len)?;
    // The RDATA ends in five 32-bit fields, the serial first (RFC 1035 §3.3.13).
    let serial_at = rdata_len.checked_sub(20)?;
    let serial = rdata.get(serial_at..serial_at + 4)?;
    *input = &input[name_len + 10 + rdata_len..];
    Some(u32::from_be_bytes([
        serial[0], serial[1], serial[2], serial[3],
    ]))
}

/// The bytes a possibly compressed name takes at the start of `input`: its labels up
/// to the root label or a pointer, which ends it (RFC 1035 §4.1.4).
fn compressed_name_len(input: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let len = *input.get(at)?;
        match len {
            0 => return Some(at + 1),
            0xC0..=0xFF => {
                input.get(at + 1)?;
                return Some(at + 2);
            }
            1..=63 if at + 1 + usize::from(len) < MAX_NAME_LEN => at += 1 + usize::from(len),
            _ => return None,
        }
    }
}

/// Reads an OPT record with the root as owner; skips its options.
fn read_opt(input: &mut &[u8]) -> Option<Edns> {
    let fixed = input.get(..OPT_LEN)?;
    if fixed[0] != 0 || be16(fixed, 1) != TYPE_OPT {
        return None;
    }
    let rdata_len = usize::from(be16(fixed, 9));
    let ttl = u32::from_be_bytes([fixed[5], fixed[6], fixed[7], fixed[8]]);
    *input = input.get(OPT_LEN + rdata_len..)?;
    Some(Edns {
        payload: be16(fixed, 3),
        version: (ttl >> 16) as u8,
        dnssec_ok: ttl & EDNS_DO != 0,
    })
}

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// One label of a name being written: its text, after an underscore when `underscore`
/// (the naming table's `_S`, `_tcp`, `_T` labels, whose text is stored without it).
#[derive(Clone, Copy, Default)]
pub struct LabelRef<'a> {
    pub underscore: bool,
    pub text: &'a [u8],
}

impl<'a> LabelRef<'a> {
    pub fn plain(text: &'a [u8]) -> LabelRef<'a> {
        LabelRef {
            underscore: false,
            text,
        }
    }

    pub fn underscored(text: &'a [u8]) -> LabelRef<'a> {
        LabelRef {
            underscore: true,
            text,
        }
    }

    fn len(&self) -> usize {
        self.text.len() + usize::from(self.underscore)
    }

    /// Whether `text` is this label, ignoring ASCII case.
    fn matches(&self, text: &[u8]) -> bool {
        match (self.underscore, text.split_first()) {
            (true, Some((b'_', rest))) => rest.eq_ignore_ascii_case(self.text),
            (true, _) => false,
            (false, _) => text.eq_ignore_ascii_case(self.text),
        }
    }

    fn bytes(&self) -> impl Iterator<Item = u8> + 'a {
        let underscore = self.underscore.then_some(b'_');
        underscore.into_iter().chain(self.text.iter().copied())
    }
}

/// A name to write: up to three labels in front of a name in wire form (a zone origin,
/// a static record's owner or the query name). Registry names are made this way
/// without building them: `I.S.Z` is `[I, S]` before `Z`.
#[derive(Clone, Copy)]
pub struct NameRef<'a> {
    head: [LabelRef<'a>; 3],
    head_len: u8,
    /// Lowercase, uncompressed wire form, root label included.
    tail: &'a [u8],
}

impl<'a> NameRef<'a> {
    /// A name in lowercase wire form.
    pub fn wire(tail: &'a [u8]) -> NameRef<'a> {
        NameRef {
            head: Default::default(),
            head_len: 0,
            tail,
        }
    }

    /// `labels` (at most three, leftmost first) in front of `tail`.
    pub fn under(labels: &[LabelRef<'a>], tail: &'a [u8]) -> NameRef<'a> {
        let mut head: [LabelRef<'a>; 3] = Default::default();
        let count = labels.len().min(head.len());
        head[..count].copy_from_slice(&labels[..count]);
        NameRef {
            head,
            head_len: count as u8,
            tail,
        }
    }

    /// The labels as owned byte strings, leftmost first (for hickory's `Name`).
    pub fn to_labels(&self) -> Vec<Vec<u8>> {
        let head = self.head[..usize::from(self.head_len)]
            .iter()
            .map(|label| label.bytes().collect());
        let tail = WireName::from_wire(self.tail).into_iter().flat_map(|tail| {
            (0..tail.label_count())
                .map(|index| tail.label(index).to_vec())
                .collect::<Vec<_>>()
        });
        head.chain(tail).collect()
    }

    /// Appends the name in uncompressed wire form (lowercase when its parts are).
    pub fn write_uncompressed(&self, out: &mut Vec<u8>) {
        for label in &self.head[..usize::from(self.head_len)] {
            out.push(label.len() as u8);
            out.extend(label.bytes());
        }
        out.extend_from_slice(self.tail);
    }
}

/// Labels of the names that take part in compression, at most. Deeper names (rare:
/// only static records can have them) are written whole and never pointed at, which
/// keeps the per-name work small.
const COMPRESSED_LABELS: usize = 16;

/// A [`NameRef`]'s labels with access by position, without copying them.
struct Labels<'a> {
    name: NameRef<'a>,
    /// Where each label of the tail starts in it.
    tail_starts: [u8; COMPRESSED_LABELS],
    count: usize,
}

impl<'a> Labels<'a> {
    /// `None` for a name of more than [`COMPRESSED_LABELS`] labels.
    fn of(name: NameRef<'a>) -> Option<Labels<'a>> {
        let mut tail_starts = [0; COMPRESSED_LABELS];
        let head = usize::from(name.head_len);
        let mut tail_labels = 0;
        let mut at = 0;
        while let Some(&len) = name.tail.get(at) {
            let len = usize::from(len);
            if len == 0 || at + 1 + len > name.tail.len() {
                break;
            }
            if head + tail_labels == COMPRESSED_LABELS {
                return None;
            }
            tail_starts[tail_labels] = at as u8;
            tail_labels += 1;
            at += 1 + len;
        }
        Some(Labels {
            name,
            tail_starts,
            count: head + tail_labels,
        })
    }

    /// The `index`th label from the left.
    fn get(&self, index: usize) -> LabelRef<'a> {
        let head = usize::from(self.name.head_len);
        if index < head {
            return self.name.head[index];
        }
        let start = usize::from(self.tail_starts[index - head]);
        let len = usize::from(self.name.tail[start]);
        LabelRef::plain(&self.name.tail[start + 1..start + 1 + len])
    }

    /// The labels from the `index`th on.
    fn from(&self, index: usize) -> impl Iterator<Item = LabelRef<'a>> + Clone + '_ {
        (index..self.count).map(|i| self.get(i))
    }
}

/// Where earlier names of a message are, by a hash of each of their suffixes, so that
/// a later name can point at the longest one it shares (RFC 1035 §4.1.4). Open
/// addressing over a fixed table; a generation number empties it in O(1).
struct Compression {
    slots: Box<[Slot]>,
    generation: u32,
    used: usize,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    generation: u32,
    hash: u32,
    offset: u16,
}

/// Table size: a power of two, comfortably above the names of a 64 KiB message that
/// are worth pointing at. Past three quarters full, new names are no longer recorded.
const COMPRESSION_SLOTS: usize = 4096;

impl Compression {
    fn new() -> Compression {
        Compression {
            slots: vec![Slot::default(); COMPRESSION_SLOTS].into_boxed_slice(),
            generation: 1,
            used: 0,
        }
    }

    fn clear(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.slots.fill(Slot::default());
            self.generation = 1;
        }
        self.used = 0;
    }

    fn insert(&mut self, hash: u32, offset: usize) {
        if offset > MAX_POINTER_OFFSET || self.used * 4 >= COMPRESSION_SLOTS * 3 {
            return;
        }
        let mask = COMPRESSION_SLOTS - 1;
        let mut index = hash as usize & mask;
        while self.slots[index].generation == self.generation {
            index = (index + 1) & mask;
        }
        self.slots[index] = Slot {
            generation: self.generation,
            hash,
            offset: offset as u16,
        };
        self.used += 1;
    }

    /// An offset below `written` where `labels` are in `message`, if recorded.
    fn find<'l>(
        &self,
        hash: u32,
        labels: impl Iterator<Item = LabelRef<'l>> + Clone,
        message: &[u8],
        written: usize,
    ) -> Option<u16> {
        let mask = COMPRESSION_SLOTS - 1;
        let mut index = hash as usize & mask;
        while self.slots[index].generation == self.generation {
            let slot = self.slots[index];
            let offset = usize::from(slot.offset);
            if slot.hash == hash && offset < written && name_at(message, offset, labels.clone()) {
                return Some(slot.offset);
            }
            index = (index + 1) & mask;
        }
        None
    }
}

/// Whether the name at `offset` of `message` (pointers followed) is `labels`,
/// ignoring ASCII case.
fn name_at<'l>(
    message: &[u8],
    mut offset: usize,
    mut labels: impl Iterator<Item = LabelRef<'l>>,
) -> bool {
    // Pointers in our own messages only go backwards; the bound guards against loops.
    for _ in 0..MAX_NAME_LEN {
        let Some(&len) = message.get(offset) else {
            return false;
        };
        if len & 0xC0 == 0xC0 {
            let Some(&low) = message.get(offset + 1) else {
                return false;
            };
            offset = usize::from(u16::from_be_bytes([len & 0x3F, low]));
            continue;
        }
        let len = usize::from(len);
        let Some(label) = labels.next() else {
            return len == 0;
        };
        if len != label.len() {
            return false;
        }
        let Some(text) = message.get(offset + 1..offset + 1 + len) else {
            return false;
        };
        if !label.matches(text) {
            return false;
        }
        offset += 1 + len;
    }
    false
}

/// A hash of a name suffix: of its leftmost label, continuing from the hash of the
/// labels after it. Case is folded by setting bit 5 of every byte, which maps every
/// letter to lower case (and may merge some other bytes: matches are verified anyway).
fn suffix_hash(label: &LabelRef<'_>, after: u32) -> u32 {
    const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut hash = (u64::from(after) << 8 | label.len() as u64).wrapping_mul(MULTIPLIER);
    if label.underscore {
        hash = (hash ^ u64::from(b'_')).wrapping_mul(MULTIPLIER);
    }
    for chunk in label.text.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        hash = (hash ^ (u64::from_le_bytes(word) | 0x2020_2020_2020_2020)).wrapping_mul(MULTIPLIER);
    }
    (hash >> 32) as u32
}

/// A thread's reusable buffers for writing responses.
pub struct Scratch {
    message: Vec<u8>,
    compression: Compression,
    /// Offsets of the TTL fields of answer records, so one TTL can be set for the set.
    answer_ttls: Vec<u16>,
    /// The question's name in lowercase wire form.
    question_name: Vec<u8>,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            message: Vec::with_capacity(4096),
            compression: Compression::new(),
            answer_ttls: Vec::new(),
            question_name: Vec::with_capacity(MAX_NAME_LEN),
        }
    }
}

impl Scratch {
    /// The last response written.
    pub fn message(&self) -> &[u8] {
        &self.message
    }
}

/// The response sections, in the order they are written.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Section {
    Answer = 0,
    Authority = 1,
    Additional = 2,
}

/// Writes a response to one query into a [`Scratch`].
pub struct ResponseWriter<'s> {
    message: &'s mut Vec<u8>,
    compression: &'s mut Compression,
    answer_ttls: &'s mut Vec<u16>,
    question_name: &'s [u8],
    /// Bytes the message may have before its OPT record.
    room: usize,
    edns: Option<Edns>,
    section: Section,
    counts: [u16; 3],
    /// Nothing more goes in: a record did not fit.
    full: bool,
}

impl<'s> ResponseWriter<'s> {
    /// Starts the response to `query` in `scratch`: header (AA set, RD and CD echoed),
    /// the question as asked, and room for `limit` bytes in all, its OPT record
    /// included when the query had EDNS.
    pub fn new(scratch: &'s mut Scratch, query: &Query<'_>, limit: usize) -> ResponseWriter<'s> {
        let Scratch {
            message,
            compression,
            answer_ttls,
            question_name,
        } = scratch;
        question_name.clear();
        question_name.extend_from_slice(query.name.as_wire());
        message.clear();
        compression.clear();
        answer_ttls.clear();
        message.extend_from_slice(&query.id.to_be_bytes());
        message.extend_from_slice(&(FLAG_QR | FLAG_AA | query.echoed_flags()).to_be_bytes());
        message.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        message.extend_from_slice(query.question);
        // Later names may point at any suffix of the question's name.
        let name = &query.name;
        let mut hash = 0;
        for index in (0..name.label_count()).rev() {
            hash = suffix_hash(&LabelRef::plain(name.label(index)), hash);
            let offset = usize::from(QUESTION_NAME_OFFSET) + usize::from(name.starts[index]);
            compression.insert(hash, offset);
        }
        let opt = if query.edns.is_some() { OPT_LEN } else { 0 };
        ResponseWriter {
            message,
            compression,
            answer_ttls,
            question_name,
            room: limit.saturating_sub(opt),
            edns: query.edns,
            section: Section::Answer,
            counts: [0; 3],
            full: false,
        }
    }

    /// Sets the response code (RFC 1035 §4.1.1; extended codes go in the OPT record).
    pub fn set_rcode(&mut self, rcode: u8) {
        self.message[3] = (self.message[3] & 0xF0) | (rcode & 0x0F);
    }

    /// Clears AA: for REFUSED and other answers that are not from our zone data.
    pub fn clear_authoritative(&mut self) {
        self.message[2] &= !((FLAG_AA >> 8) as u8);
    }

    /// Sets TC: the answer did not fit.
    pub fn set_truncated(&mut self) {
        self.message[2] |= (FLAG_TC >> 8) as u8;
    }

    pub fn is_truncated(&self) -> bool {
        self.message[2] & (FLAG_TC >> 8) as u8 != 0
    }

    /// Moves on to a later section. Records of earlier sections can no longer be added.
    pub fn begin(&mut self, section: Section) {
        debug_assert!(section >= self.section);
        self.section = section;
    }

    /// Whether a record has failed to fit.
    pub fn is_full(&self) -> bool {
        self.full
    }

    pub fn answers(&self) -> usize {
        usize::from(self.counts[Section::Answer as usize])
    }

    /// Adds a record to the current section, whole or not at all. `rdata` writes the
    /// record data; false when the record did not fit, after which nothing more goes in.
    pub fn record(
        &mut self,
        owner: NameRef<'_>,
        record_type: u16,
        ttl: u32,
        rdata: impl FnOnce(&mut RdataWriter<'_, 's>),
    ) -> bool {
        if self.full {
            return false;
        }
        let mark = self.message.len();
        self.name(owner, true);
        self.message.extend_from_slice(&record_type.to_be_bytes());
        self.message.extend_from_slice(&CLASS_IN.to_be_bytes());
        let ttl_at = self.message.len();
        self.message.extend_from_slice(&ttl.to_be_bytes());
        let length_at = self.message.len();
        self.message.extend_from_slice(&[0, 0]);
        rdata(&mut RdataWriter { writer: self });
        let rdata_len = self.message.len() - length_at - 2;
        if self.message.len() > self.room || rdata_len > usize::from(u16::MAX) {
            self.message.truncate(mark);
            self.full = true;
            return false;
        }
        self.message[length_at..length_at + 2].copy_from_slice(&(rdata_len as u16).to_be_bytes());
        let section = self.section as usize;
        self.counts[section] += 1;
        if self.section == Section::Answer {
            if let Ok(at) = u16::try_from(ttl_at) {
                self.answer_ttls.push(at);
            }
        }
        true
    }

    /// Where the message is now, to roll back to with [`ResponseWriter::rollback`].
    pub fn mark(&self) -> (usize, [u16; 3]) {
        (self.message.len(), self.counts)
    }

    /// Drops everything written since `mark` (an RRset of the additional section that
    /// did not fit whole).
    pub fn rollback(&mut self, mark: (usize, [u16; 3])) {
        self.message.truncate(mark.0);
        self.counts = mark.1;
    }

    /// Gives every answer record from the `first`th on this TTL.
    pub fn set_answer_ttl(&mut self, first: usize, ttl: u32) {
        for &at in self.answer_ttls.iter().skip(first) {
            let at = usize::from(at);
            self.message[at..at + 4].copy_from_slice(&ttl.to_be_bytes());
        }
    }

    /// Writes `name`, pointing at the longest suffix already in the message when
    /// `compress`, and records where its own suffixes are for later names.
    fn name(&mut self, name: NameRef<'_>, compress: bool) {
        // Answers are mostly owned by the question's name: point straight at it.
        if compress && name.head_len == 0 && name.tail == self.question_name {
            self.message
                .extend_from_slice(&(0xC000 | QUESTION_NAME_OFFSET).to_be_bytes());
            return;
        }
        let Some(labels) = Labels::of(name) else {
            for label in &name.head[..usize::from(name.head_len)] {
                self.message.push(label.len() as u8);
                self.message.extend(label.bytes());
            }
            self.message.extend_from_slice(name.tail);
            return;
        };
        let count = labels.count;
        let mut hashes = [0u32; COMPRESSED_LABELS];
        let mut hash = 0;
        for index in (0..count).rev() {
            hash = suffix_hash(&labels.get(index), hash);
            hashes[index] = hash;
        }
        let written = self.message.len();
        let found = (0..count).find_map(|index| {
            let pointer =
                self.compression
                    .find(hashes[index], labels.from(index), self.message, written)?;
            Some((index, pointer))
        });
        let (own, pointer) = match found {
            Some((index, pointer)) if compress => (index, Some(pointer)),
            _ => (count, None),
        };
        for (index, &hash) in hashes[..own].iter().enumerate() {
            // A suffix already recorded keeps its first place; later ones would only
            // slow the table down.
            if found.is_none_or(|(at, _)| index < at) {
                self.compression.insert(hash, self.message.len());
            }
            let label = labels.get(index);
            self.message.push(label.len() as u8);
            self.message.extend(label.bytes());
        }
        match pointer {
            Some(offset) => self
                .message
                .extend_from_slice(&(0xC000 | offset).to_be_bytes()),
            None => self.message.push(0),
        }
    }

    /// Finishes the message: section counts, and the OPT record (with `extended_rcode`,
    /// the upper bits of the response code) when the query had EDNS. Returns it.
    pub fn finish(self, extended_rcode: u8) -> &'s [u8] {
        if let Some(edns) = self.edns {
            // What we take over UDP, as we send: the client's size within our bounds.
            let payload = edns
                .payload
                .clamp(CLASSIC_UDP_LIMIT as u16, MAX_UDP_RESPONSE as u16);
            let ttl = (u32::from(extended_rcode) << 24) | if edns.dnssec_ok { EDNS_DO } else { 0 };
            self.message.push(0);
            self.message.extend_from_slice(&TYPE_OPT.to_be_bytes());
            self.message.extend_from_slice(&payload.to_be_bytes());
            self.message.extend_from_slice(&ttl.to_be_bytes());
            self.message.extend_from_slice(&[0, 0]);
        }
        let additionals = self.counts[2] + u16::from(self.edns.is_some());
        for (index, count) in [self.counts[0], self.counts[1], additionals]
            .into_iter()
            .enumerate()
        {
            let at = 6 + 2 * index;
            self.message[at..at + 2].copy_from_slice(&count.to_be_bytes());
        }
        self.message
    }
}

/// Where a record's data is written: into a response, compressing names where
/// allowed ([`RdataWriter`]), or as standalone bytes with every name whole (`Vec<u8>`,
/// for records kept outside a message, as zone transfers keep them).
pub trait RdataOut {
    fn bytes(&mut self, bytes: &[u8]);

    fn u16(&mut self, value: u16) {
        self.bytes(&value.to_be_bytes());
    }

    fn u32(&mut self, value: u32) {
        self.bytes(&value.to_be_bytes());
    }

    /// A name that may be compressed (NS, CNAME, PTR, MX, SOA: RFC 3597 §4).
    fn name(&mut self, name: NameRef<'_>);

    /// A name that must not be compressed (SRV, RFC 2782), though later names may
    /// point at it.
    fn name_uncompressed(&mut self, name: NameRef<'_>);
}

/// Writes one record's data.
pub struct RdataWriter<'w, 's> {
    writer: &'w mut ResponseWriter<'s>,
}

impl RdataOut for RdataWriter<'_, '_> {
    fn bytes(&mut self, bytes: &[u8]) {
        self.writer.message.extend_from_slice(bytes);
    }

    fn name(&mut self, name: NameRef<'_>) {
        self.writer.name(name, true);
    }

    fn name_uncompressed(&mut self, name: NameRef<'_>) {
        self.writer.name(name, false);
    }
}

impl RdataOut for Vec<u8> {
    fn bytes(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    fn name(&mut self, name: NameRef<'_>) {
        name.write_uncompressed(self);
    }

    fn name_uncompressed(&mut self, name: NameRef<'_>) {
        name.write_uncompressed(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[u8], record_type: u16, edns: Option<u16>) -> Vec<u8> {
        let mut packet = vec![
            0x12,
            0x34,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(edns.is_some()),
        ];
        packet.extend_from_slice(name);
        packet.extend_from_slice(&record_type.to_be_bytes());
        packet.extend_from_slice(&CLASS_IN.to_be_bytes());
        if let Some(payload) = edns {
            packet.extend_from_slice(&[0, 0, 41]);
            packet.extend_from_slice(&payload.to_be_bytes());
            packet.extend_from_slice(&[0, 0, 0x80, 0, 0, 0]);
        }
        packet
    }

    const WEB: &[u8] = b"\x03Web\x03svc\x08internal\x00";

    #[test]
    fn reads_a_plain_query() {
        let packet = query(WEB, TYPE_SRV, Some(1232));
        let Packet::Query(q) = Packet::parse(&packet) else {
            panic!("not a plain query");
        };
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.name.as_wire(), b"\x03web\x03svc\x08internal\x00");
        assert_eq!(q.name.label_count(), 3);
        assert_eq!(q.name.label(1), b"svc");
        assert_eq!(q.record_type, TYPE_SRV);
        assert_eq!(
            q.edns,
            Some(Edns {
                payload: 1232,
                version: 0,
                dnssec_ok: true
            })
        );
        assert!(q.name.is_within(b"\x03svc\x08internal\x00"));
        assert!(q.name.is_within(b"\x00"));
        assert!(!q.name.is_within(b"\x02vc\x08internal\x00"));
    }

    #[test]
    fn leaves_other_shapes_to_hickory() {
        let mut two_questions = query(WEB, TYPE_A, None);
        two_questions[5] = 2;
        let mut trailing = query(WEB, TYPE_A, None);
        trailing.push(0);
        let mut compressed = query(WEB, TYPE_A, None);
        compressed.truncate(HEADER_LEN);
        compressed.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
        let mut update = query(WEB, TYPE_A, None);
        update[2] = 0x28;
        for packet in [two_questions, trailing, compressed, update] {
            assert!(matches!(Packet::parse(&packet), Packet::Other));
        }
        let mut response = query(WEB, TYPE_A, None);
        response[2] |= 0x80;
        assert!(matches!(Packet::parse(&response), Packet::Ignore));
        assert!(matches!(Packet::parse(&[0; 5]), Packet::Ignore));
    }

    #[test]
    fn compresses_against_the_question_and_earlier_names() {
        let packet = query(WEB, TYPE_SRV, None);
        let Packet::Query(q) = Packet::parse(&packet) else {
            panic!("not a plain query");
        };
        let mut scratch = Scratch::default();
        let mut writer = ResponseWriter::new(&mut scratch, &q, 512);
        let zone = b"\x03svc\x08internal\x00";
        let target = [LabelRef::plain(b"a"), LabelRef::plain(b"web")];
        assert!(
            writer.record(NameRef::wire(q.name.as_wire()), TYPE_SRV, 30, |r| {
                r.u16(0);
                r.u16(0);
                r.u16(80);
                r.name_uncompressed(NameRef::under(&target, zone));
            })
        );
        writer.begin(Section::Additional);
        assert!(
            writer.record(NameRef::under(&target, zone), TYPE_A, 30, |r| {
                r.bytes(&[10, 0, 0, 1])
            })
        );
        let message = writer.finish(0).to_vec();
        let question_end = HEADER_LEN + WEB.len() + 4;
        // The owner is a pointer to the question.
        assert_eq!(&message[question_end..question_end + 2], &[0xC0, 0x0C]);
        // The SRV target is written out in full; the A record's owner points at it.
        let target_at = question_end + 2 + 10 + 6;
        assert_eq!(
            &message[target_at..target_at + 20],
            b"\x01a\x03web\x03svc\x08internal\x00"
        );
        let a_owner = target_at + 20;
        assert_eq!(
            &message[a_owner..a_owner + 2],
            &(0xC000 | target_at as u16).to_be_bytes()
        );
        let parsed = hickory_proto::op::Message::from_vec(&message).expect("valid message");
        assert_eq!(parsed.answers.len(), 1);
        assert_eq!(parsed.additionals.len(), 1);
        assert_eq!(parsed.additionals[0].name.to_ascii(), "a.web.svc.internal.");
    }

    #[test]
    fn a_record_that_does_not_fit_leaves_no_trace() {
        let packet = query(WEB, TYPE_A, None);
        let Packet::Query(q) = Packet::parse(&packet) else {
            panic!("not a plain query");
        };
        let mut scratch = Scratch::default();
        let header_and_question = HEADER_LEN + WEB.len() + 4;
        let mut writer = ResponseWriter::new(&mut scratch, &q, header_and_question + 16 + 10);
        let owner = NameRef::wire(q.name.as_wire());
        assert!(writer.record(owner, TYPE_A, 30, |r| r.bytes(&[10, 0, 0, 1])));
        assert!(!writer.record(owner, TYPE_A, 30, |r| r.bytes(&[10, 0, 0, 2])));
        assert!(writer.is_full());
        let message = writer.finish(0);
        assert_eq!(message.len(), header_and_question + 16);
        assert_eq!(&message[6..8], &[0, 1]);
    }

    #[test]
    fn deep_names_are_written_whole() {
        let packet = query(WEB, TYPE_A, None);
        let Packet::Query(q) = Packet::parse(&packet) else {
            panic!("not a plain query");
        };
        let mut scratch = Scratch::default();
        let mut writer = ResponseWriter::new(&mut scratch, &q, 4096);
        let mut deep = Vec::new();
        for _ in 0..20 {
            deep.extend_from_slice(b"\x01x");
        }
        deep.extend_from_slice(b"\x03svc\x08internal\x00");
        let labels = [LabelRef::underscored(b"srv"), LabelRef::plain(b"a")];
        for _ in 0..2 {
            assert!(
                writer.record(NameRef::under(&labels, &deep), TYPE_PTR, 30, |r| {
                    r.name(NameRef::wire(&deep))
                })
            );
        }
        let message = writer.finish(0).to_vec();
        let parsed = hickory_proto::op::Message::from_vec(&message).expect("valid message");
        assert_eq!(parsed.answers.len(), 2);
        let owner = parsed.answers[1].name.to_ascii();
        assert!(owner.starts_with("_srv.a.x.x."), "{owner}");
        assert_eq!(owner.matches("x.").count(), 20);
    }
}
