use substruct_prospector::http_get::{parse_response_head, BaseUrl};

/// The prospector's image download client: the edge's response head
/// (`http_get::parse_response_head`) and the edge base URL it is given on the kernel
/// command line (`http_get::BaseUrl::parse`, then `target`). A parsed head must not
/// claim more bytes than it was given.
///
/// Input: the bytes of a response head (status line and headers, maybe partial), also
/// read as a base URL when they are UTF-8.
pub fn prospector_http_head(data: &[u8]) {
    if let Ok(Some((_head, used))) = parse_response_head(data) {
        assert!(used <= data.len());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(url) = BaseUrl::parse(text) {
            let _ = (url.host(), url.port(), url.authority());
            let _ = url.target("/images/disk.raw");
        }
    }
}
