//! A crash or power cut in the middle of an append leaves at most a torn last line; opening the
//! log must recover every complete entry and keep working.

mod common;

use std::fs;
use std::io::Write as _;

use common::measurement;
use mint_attest::{Measurement, MeasurementLog};

/// A real 3-entry log written through `append`, as bytes, plus its entries.
fn three_entry_log() -> (Vec<u8>, Vec<Measurement>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.jsonl");
    let mut log = MeasurementLog::open(&path).unwrap();
    for n in 0..3 {
        log.append(measurement(n)).unwrap();
    }
    let entries = log.entries().to_vec();
    drop(log);
    (fs::read(&path).unwrap(), entries)
}

#[test]
fn torn_tail_is_cut_and_appending_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.jsonl");
    let mut log = MeasurementLog::open(&path).unwrap();
    log.append(measurement(0)).unwrap();
    log.append(measurement(1)).unwrap();
    let kept = log.entries().to_vec();
    drop(log);
    let clean_len = fs::metadata(&path).unwrap().len();

    // What a crash half-way through writing the third line leaves behind.
    let partial = br#"{"index":2,"pcr":23,"kind":"model","name":"kw"#;
    fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(partial)
        .unwrap();

    let mut log = MeasurementLog::open(&path).unwrap();
    assert_eq!(log.entries(), &kept[..]);
    assert_eq!(log.recovered_bytes(), partial.len() as u64);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        clean_len,
        "file truncated"
    );

    let third = log.append(measurement(2)).unwrap();
    assert_eq!(third.index, 2);
    drop(log);
    let log = MeasurementLog::open(&path).unwrap();
    assert_eq!(log.recovered_bytes(), 0);
    assert_eq!(log.entries().len(), 3);
    assert_eq!(log.entries()[2], third);
}

#[test]
fn every_truncation_recovers_a_prefix() {
    let (bytes, entries) = three_entry_log();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.jsonl");
    for cut in 0..=bytes.len() {
        fs::write(&path, &bytes[..cut]).unwrap();
        let complete_lines = bytes[..cut].iter().filter(|&&b| b == b'\n').count();
        let clean_len = bytes[..cut]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);

        let mut log = MeasurementLog::open(&path)
            .unwrap_or_else(|e| panic!("truncation at byte {cut} must recover: {e:?}"));
        assert_eq!(log.entries(), &entries[..complete_lines], "cut at {cut}");
        assert_eq!(
            log.recovered_bytes(),
            (cut - clean_len) as u64,
            "cut at {cut}"
        );
        assert_eq!(fs::metadata(&path).unwrap().len(), clean_len as u64);

        // And the recovered log takes the next entry where it left off.
        let next = log.append(measurement(9)).unwrap();
        assert_eq!(next.index, complete_lines as u64, "cut at {cut}");
        drop(log);
        let reopened = MeasurementLog::open(&path).unwrap();
        assert_eq!(reopened.entries().len(), complete_lines + 1, "cut at {cut}");
        assert_eq!(reopened.recovered_bytes(), 0);
    }
}

#[test]
fn zero_filled_last_line_is_a_tear() {
    // Some filesystems extend the file before the data blocks reach the disk: after a power
    // cut the last line reads back as NULs, newline included or not.
    let (bytes, entries) = three_entry_log();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.jsonl");
    let second_end = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(1)
        .unwrap()
        .0
        + 1;
    let third_len = bytes.len() - second_end;
    for tail in [
        vec![0u8; third_len],
        [vec![0u8; third_len - 1], vec![b'\n']].concat(),
    ] {
        let mut damaged = bytes[..second_end].to_vec();
        damaged.extend(&tail);
        fs::write(&path, &damaged).unwrap();
        let log = MeasurementLog::open(&path).unwrap();
        assert_eq!(log.entries(), &entries[..2]);
        assert_eq!(log.recovered_bytes(), third_len as u64);
    }
}

#[test]
fn half_written_last_line_with_newline_is_a_tear() {
    // The newline's block reached the disk, the start of the line did not.
    let (bytes, entries) = three_entry_log();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.jsonl");
    let mut damaged = bytes.clone();
    let len = damaged.len();
    damaged[len - 20..len - 1].fill(0);
    fs::write(&path, &damaged).unwrap();
    let log = MeasurementLog::open(&path).unwrap();
    assert_eq!(log.entries(), &entries[..2]);
}
