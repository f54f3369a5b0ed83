#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pipe::fuzz::token_dataset(data));
