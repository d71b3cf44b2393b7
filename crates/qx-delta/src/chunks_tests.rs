#![allow(clippy::unwrap_used)]

use crate::chunks::{
    check, fetched_bytes, pack, plan, scan, unpack, Index, Source, MAX_FETCH, PARAMS,
};
use crate::tests::noise;

/// A host's rebuild: the booted image's chunks where the plan says so, the pack's otherwise.
fn rebuild(index: &Index, packed: &[u8], booted: &[u8], sources: &[Source]) -> Vec<u8> {
    let mut out = Vec::new();
    let offsets: Vec<u64> = index
        .chunks
        .iter()
        .scan(0u64, |at, c| {
            let here = *at;
            *at += u64::from(c.pack_len);
            Some(here)
        })
        .collect();
    for s in sources {
        match *s {
            Source::Local { chunk, offset } => {
                let e = &index.chunks[chunk];
                let data = &booted[offset as usize..offset as usize + e.len as usize];
                check(e, data).unwrap();
                out.extend_from_slice(data);
            }
            Source::Pack {
                first,
                count,
                offset,
                len,
            } => {
                let run = &packed[offset as usize..(offset + len) as usize];
                let entries = index.chunks[first..first + count].iter();
                for (e, at) in entries.zip(&offsets[first..first + count]) {
                    let start = (at - offset) as usize;
                    out.extend(unpack(e, &run[start..start + e.pack_len as usize]).unwrap());
                }
            }
        }
    }
    out
}

#[test]
fn an_image_with_an_insertion_and_an_edit_is_rebuilt_fetching_only_the_changed_chunks() {
    let old = noise(4 << 20, 1);
    let mut new = old.clone();
    new.splice(1 << 20..1 << 20, noise(10_000, 2));
    new[3 << 20] ^= 0xff;
    let mut packed = Vec::new();
    let index = pack(&new[..], &mut packed, 3).unwrap();
    assert_eq!(index.image_size, new.len() as u64);
    assert_eq!(index.pack_size(), packed.len() as u64);
    let index = Index::parse(&index.to_bytes()).unwrap();

    let local = scan(&old[..], index.params).unwrap();
    let sources = plan(&index, &local, MAX_FETCH);
    assert_eq!(rebuild(&index, &packed, &old, &sources), new);
    let fetched = fetched_bytes(&sources);
    assert!(fetched > 10_000, "the inserted bytes come from the pack");
    assert!(
        fetched < 2 * u64::from(PARAMS.max) * 3,
        "{fetched} of {}",
        packed.len()
    );

    // With nothing in common, everything comes from the pack, in runs of at most MAX_FETCH.
    let none = scan(&noise(1 << 20, 9)[..], index.params).unwrap();
    let sources = plan(&index, &none, 1 << 20);
    assert_eq!(fetched_bytes(&sources), packed.len() as u64);
    assert!(sources
        .iter()
        .all(|s| matches!(s, Source::Pack { len, .. } if *len <= 1 << 20)));
    assert_eq!(rebuild(&index, &packed, &[], &sources), new);
}

#[test]
fn an_empty_image_has_no_chunks() {
    let mut packed = Vec::new();
    let index = pack(&[][..], &mut packed, 3).unwrap();
    assert!(index.chunks.is_empty() && packed.is_empty());
    assert_eq!(Index::parse(&index.to_bytes()).unwrap(), index);
}

#[test]
fn a_corrupt_index_is_refused() {
    let mut packed = Vec::new();
    let index = pack(&noise(300_000, 3)[..], &mut packed, 3).unwrap();
    let good = index.to_bytes();
    let set = |at: usize, v: &[u8]| {
        let mut b = good.clone();
        b[at..at + v.len()].copy_from_slice(v);
        b
    };
    let header = 5 + 12 + 8 + 8;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("other magic", set(0, b"QXCX")),
        ("truncated", good[..good.len() - 1].to_vec()),
        ("count too large", set(5 + 12 + 8, &u64::MAX.to_le_bytes())),
        (
            "image size off by one",
            set(5 + 12, &(index.image_size + 1).to_le_bytes()),
        ),
        ("a zero-length chunk", set(header, &0u32.to_le_bytes())),
        (
            "a chunk above the maximum",
            set(header, &(PARAMS.max + 1).to_le_bytes()),
        ),
        (
            "a packed length past the bound",
            set(header + 4, &u32::MAX.to_le_bytes()),
        ),
        (
            "an average above the maximum",
            set(5 + 4, &(PARAMS.max * 2).to_le_bytes()),
        ),
    ];
    for (what, bytes) in cases {
        assert!(Index::parse(&bytes).is_err(), "{what}");
    }
}

#[test]
fn a_chunk_that_does_not_match_its_entry_is_refused() {
    let data = noise(200_000, 4);
    let mut packed = Vec::new();
    let index = pack(&data[..], &mut packed, 3).unwrap();
    let e = index.chunks[0];
    let mut spoilt = packed[..e.pack_len as usize].to_vec();
    let at = spoilt.len() / 2;
    spoilt[at] ^= 1;
    assert!(unpack(&e, &spoilt).is_err());
    assert!(unpack(&e, &packed[..e.pack_len as usize]).is_ok());
    assert!(check(&e, &data[1..=e.len as usize]).is_err());
}
