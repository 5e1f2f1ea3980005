//! Request-side message counting for the observation layer: `grpc_server_msg_received_total`
//! grows as request messages arrive, not when the call ends, so a long client stream shows its
//! progress.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::frames::FrameScanner;

pin_project! {
    /// Request body counting received messages into `grpc_server_msg_received_total`.
    pub struct CountingBody<B> {
        #[pin]
        inner: B,
        scanner: FrameScanner,
        received: prometheus::IntCounter,
    }
}

impl<B> CountingBody<B> {
    pub(crate) fn new(inner: B, received: prometheus::IntCounter) -> Self {
        CountingBody { inner, scanner: FrameScanner::default(), received }
    }
}

impl<B: Body<Data = Bytes>> Body for CountingBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let scan = this.scanner.scan(data);
            if scan.messages > 0 {
                this.received.inc_by(scan.messages);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
