//! The gRPC codec of every rooms service: tonic's prost codec with small
//! initial buffers. A gateway keeps one stream per active room to the
//! roomhost, and each stream end holds an encode and a decode buffer:
//! tonic's 8 KiB defaults would cost about 32 KiB per active room across
//! the two processes. Buffers still grow on demand for larger messages.

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// Initial encode/decode buffer per stream.
pub const BUFFER_BYTES: usize = 512;
/// Encoded bytes after which a busy stream yields to others (tonic's default).
pub const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

#[derive(Debug, Clone, Copy)]
pub struct SmallBufferCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
