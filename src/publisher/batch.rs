//! Packing pre-serialized events into requests Event Grid accepts.

use std::ops::Range;

/// Largest request body Event Grid accepts, in bytes.
pub const MAX_REQUEST_BYTES: usize = 1_048_576;
/// Most events Event Grid accepts in one request.
pub const MAX_REQUEST_EVENTS: usize = 5_000;

/// Splits events of the given serialized sizes, in order, into consecutive ranges whose JSON
/// array (`[`, events joined by `,`, `]`) stays within `max_bytes` and `max_events`.
///
/// An event too large to fit any request on its own gets a range of its own; the caller
/// checks such a range with [`fits_alone`] and dead-letters what does not fit.
#[must_use]
pub fn pack(sizes: &[usize], max_bytes: usize, max_events: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 2; // the brackets
    for (i, &size) in sizes.iter().enumerate() {
        let count = i - start;
        let added = size + usize::from(count > 0);
        if count > 0 && (bytes + added > max_bytes || count >= max_events) {
            out.push(start..i);
            start = i;
            bytes = 2 + size;
        } else {
            bytes += added;
        }
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// Can an event of `size` bytes be sent at all?
#[must_use]
pub const fn fits_alone(size: usize, max_bytes: usize) -> bool {
    size + 2 <= max_bytes
}

/// The request body for `events`: a JSON array of the pre-serialized events.
#[must_use]
pub fn body<'a>(events: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let events = events.into_iter();
    let mut out = Vec::with_capacity(events.size_hint().0 * 1024 + 2);
    out.push(b'[');
    for (i, e) in events.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_len(sizes: &[usize], r: &Range<usize>) -> usize {
        2 + sizes[r.clone()].iter().sum::<usize>() + r.len().saturating_sub(1)
    }

    #[test]
    fn batches_fill_up_to_the_byte_limit_exactly() {
        // 3 events of 4 bytes: [a,b,c] = 2 + 12 + 2 = 16 bytes.
        assert_eq!(pack(&[4, 4, 4], 16, 100), vec![0..3]);
        assert_eq!(pack(&[4, 4, 4], 15, 100), vec![0..2, 2..3]);
        assert_eq!(pack(&[4, 4, 4], 6, 100), vec![0..1, 1..2, 2..3]);
    }

    #[test]
    fn batches_respect_the_event_limit() {
        let sizes = vec![1; 12_001];
        let ranges = pack(&sizes, usize::MAX, MAX_REQUEST_EVENTS);
        assert_eq!(ranges, vec![0..5000, 5000..10_000, 10_000..12_001]);
    }

    #[test]
    fn every_batch_is_within_limits_and_nothing_is_dropped_or_reordered() {
        let sizes: Vec<usize> = (0..5000).map(|i| 100 + (i * 7919) % 40_000).collect();
        let ranges = pack(&sizes, MAX_REQUEST_BYTES, MAX_REQUEST_EVENTS);
        let mut next = 0;
        for r in &ranges {
            assert_eq!(r.start, next);
            next = r.end;
            assert!(r.len() <= MAX_REQUEST_EVENTS);
            assert!(body_len(&sizes, r) <= MAX_REQUEST_BYTES, "{r:?}");
        }
        assert_eq!(next, sizes.len());
    }

    #[test]
    fn an_oversized_event_travels_alone() {
        assert_eq!(pack(&[3, 50, 3], 20, 100), vec![0..1, 1..2, 2..3]);
        assert!(!fits_alone(50, 20));
        assert!(fits_alone(18, 20));
        assert!(!fits_alone(19, 20));
    }

    #[test]
    fn bodies_are_json_arrays_of_the_events() {
        let b = body([&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]]);
        assert_eq!(b, b"[{\"a\":1},{\"b\":2}]");
        assert_eq!(body(std::iter::empty::<&[u8]>()), b"[]");
    }
}
