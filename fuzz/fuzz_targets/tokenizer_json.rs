#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pipe::fuzz::tokenizer_json(data));
