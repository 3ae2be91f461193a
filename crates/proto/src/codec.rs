//! The gRPC codec every shoal service and client uses: prost, with small starting
//! buffers.
//!
//! tonic's default codec starts each call's encode and decode buffer at 8 KiB. A
//! manager holds three long-lived streams per node (session, heartbeats, log
//! publishing), whose messages are a few hundred bytes: at 1,000 nodes the default
//! buffers alone held about 24 MiB of the leader's memory. A buffer here starts at
//! 1 KiB and grows as a message needs (an assignment set of megabytes still encodes in
//! one piece).

use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Where a call's encode and decode buffers start.
pub const START_BUFFER: usize = 1024;

/// How much a stream encodes before it yields to send (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(START_BUFFER, YIELD_THRESHOLD)
}

/// prost encoding with [`START_BUFFER`]-sized starting buffers (named in build.rs as
/// the generated services' codec).
#[derive(Debug, Clone)]
pub struct SmallCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallCodec<T, U> {
    fn default() -> Self {
        SmallCodec(PhantomData)
    }
}

impl<T, U> Codec for SmallCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::Task;
    use tonic::codec::{Decoder, Encoder};

    #[test]
    fn buffers_start_small() {
        let mut c = SmallCodec::<Task, Task>::default();
        let want = format!("buffer_size: {START_BUFFER},");
        assert!(format!("{:?}", c.encoder().buffer_settings()).contains(&want));
        assert!(format!("{:?}", c.decoder().buffer_settings()).contains(&want));
    }
}
