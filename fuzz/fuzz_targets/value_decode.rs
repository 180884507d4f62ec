//! Arbitrary bytes through every value decoder: errors, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use surpd::value;

fuzz_target!(|data: &[u8]| {
    let _ = value::validate(data);
    // Compressed values: a frame, a length and a bomb's claim are all untrusted.
    let _ = value::validate_stored(data, 1 << 20);
    let _ = value::has_pickle_within(data, 1 << 20);
    let _ = value::decode_int(data);
    let _ = value::zset_entries(data);
    let _ = value::list_items(data);
    let _ = value::dict_items(data);
    let _ = value::type_name(data);
    let mut r = value::Reader::new(data);
    let _ = value::skip(&mut r, 0);
});
