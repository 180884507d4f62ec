//! A valid segment with fuzzer-chosen bytes patched in (header, index, records): opening,
//! reading keys and the offline check never panic.
#![no_main]
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use surpd::client::data_path;
use surpd::segment::{Geometry, NewRec, Segment};

static BASE: OnceLock<(Vec<u8>, PathBuf)> = OnceLock::new();

fn base() -> &'static (Vec<u8>, PathBuf) {
    BASE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("surpd-fuzz-seg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = data_path(&dir);
        let geo = Geometry::for_size(1 << 20, 64).unwrap();
        Segment::create(&p, &geo, 64, 0, 0o600).unwrap();
        let seg = Segment::open(&p, true).unwrap();
        let mut off = seg.heap_off;
        for i in 0..200u32 {
            let key = format!("k{i}");
            let h = seg.hash(key.as_bytes());
            let val = [6u8, 1, b'x'];
            seg.write_record(
                off,
                &NewRec { key: key.as_bytes(), value: &val, hash: h, version: 1, expires_ms: 0 },
            );
            let (slot, _) = seg.find_for_write(key.as_bytes(), h).unwrap();
            seg.publish(slot, h, off);
            off += surpd::layout::record_size(key.len() as u64, 3);
        }
        seg.hdr().head.store(off - seg.heap_off, std::sync::atomic::Ordering::Relaxed);
        seg.hdr().items.store(200, std::sync::atomic::Ordering::Relaxed);
        drop(seg);
        (std::fs::read(&p).unwrap(), dir)
    })
}

fuzz_target!(|data: &[u8]| {
    let (image, dir) = base();
    let mut img = image.clone();
    // The input is a list of (offset: u32, byte) patches.
    for chunk in data.chunks_exact(5) {
        let off = u32::from_le_bytes(chunk[..4].try_into().unwrap()) as usize;
        // Bias towards the header, index and the first records.
        let off = off % (64 << 10).max(1);
        let len = img.len();
        img[off % len] = chunk[4];
    }
    let p = data_path(dir);
    std::fs::write(&p, &img).unwrap();
    if let Ok(seg) = Segment::open(&p, false) {
        for i in 0..200u32 {
            let key = format!("k{i}");
            let _ = seg.probe(key.as_bytes(), seg.hash(key.as_bytes()));
        }
    }
    let _ = surpd::check::check(dir);
});
