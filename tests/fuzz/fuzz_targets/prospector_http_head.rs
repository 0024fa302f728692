//! The prospector's image download client: the edge's response head
//! (`http_get::parse_response_head`) and the edge base URL it is given on the kernel
//! command line (`http_get::BaseUrl::parse`, then `target`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use substruct_prospector::http_get::{parse_response_head, BaseUrl};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_head, used))) = parse_response_head(data) {
        assert!(used <= data.len());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(url) = BaseUrl::parse(text) {
            let _ = (url.host(), url.port(), url.authority());
            let _ = url.target("/images/disk.raw");
        }
    }
});
