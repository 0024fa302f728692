use substruct_prospector::facts::bmc::{read, Transport};

/// The prospector's reading of a BMC's IPMI answers (`facts::bmc::read`: Get Device
/// ID, Get Channel Info, Get LAN Configuration Parameters) through a transport that
/// returns fuzzed responses.
///
/// Input: responses one after another, each a length byte then that many bytes (fewer
/// if the input ends first); a length of 255 is "no answer". Once the input is used up,
/// every request goes unanswered.
pub fn bmc_ipmi(data: &[u8]) {
    let _ = read(&mut Replay(data));
}

/// A BMC that answers each request with the next response in the input.
struct Replay<'a>(&'a [u8]);

impl Transport for Replay<'_> {
    fn request(&mut self, _netfn: u8, _cmd: u8, _data: &[u8]) -> Option<Vec<u8>> {
        let (&len, rest) = self.0.split_first()?;
        if len == 255 {
            self.0 = rest;
            return None;
        }
        let len = usize::from(len).min(rest.len());
        let (answer, rest) = rest.split_at(len);
        self.0 = rest;
        Some(answer.to_vec())
    }
}
