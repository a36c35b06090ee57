package batutanats

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/batuta-dev/batuta"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Header names the adapter writes. Headers whose names start with "Nats-"
// belong to the server and are not passed to Message.Headers.
const (
	// HeaderID carries Message.ID on dead letters, whose Nats-Msg-Id must
	// differ from the original's (the stream deduplicates by it).
	HeaderID = "Batuta-Id"
	// HeaderTime carries Message.Time (RFC 3339, nanoseconds).
	HeaderTime = "Batuta-Time"
	// HeaderDeadReason and HeaderDeadAttempts are set on dead letters.
	HeaderDeadReason   = "Batuta-Dead-Reason"
	HeaderDeadAttempts = "Batuta-Dead-Attempts"
	// HeaderDeadSourceSeq is set on a dead letter whose body DeadLetter cut
	// to fit the server's max_payload: "<stream>-<sequence>" of the
	// original (see also the batuta-dead-letter-truncated headers).
	HeaderDeadSourceSeq = "Batuta-Dead-Source-Seq"
)

// encodeMessage builds the NATS message for msg on subject.
func encodeMessage(subject string, msg batuta.Message, msgID string) (*nats.Msg, error) {
	nm := nats.NewMsg(subject)
	nm.Data = msg.Body
	for k, v := range msg.Headers {
		if err := validHeader(k, v); err != nil {
			return nil, err
		}
		nm.Header.Set(k, v)
	}
	nm.Header.Set(HeaderTime, msg.Time.UTC().Format(time.RFC3339Nano))
	nm.Header.Set(nats.MsgIdHdr, msgID)
	return nm, nil
}

// validHeader refuses header names and values NATS cannot carry.
func validHeader(k, v string) error {
	if k == "" {
		return fmt.Errorf("empty header name: %w", batuta.ErrInvalidPayload)
	}
	if strings.HasPrefix(k, "Nats-") || k == HeaderID || k == HeaderTime {
		return fmt.Errorf("header %q is reserved: %w", k, batuta.ErrInvalidPayload)
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return fmt.Errorf("header name %q has the character %q: %w", k, c, batuta.ErrInvalidPayload)
		}
	}
	if strings.ContainsAny(v, "\r\n") {
		return fmt.Errorf("header %q: value has a line break: %w", k, batuta.ErrInvalidPayload)
	}
	return nil
}

// decodeMessage turns a JetStream message into a Message.
//
// The message ID (the queue trigger's event ID, which the orchestrator runs
// once) is the Batuta-Id header (set on the adapter's dead letters), else
// the Nats-Msg-Id header, else fallbackID: "<stream>-<stream sequence>-<the
// stored time in Unix nanoseconds>". Every redelivery of a stored message
// has the same sequence and stored time, so its ID never changes; the time
// keeps the ID of a message in a deleted and re-created stream (whose
// sequences start again at 1) from matching an older message's, which the
// orchestrator would take for a duplicate and never run. A producer that
// may send one message twice sets Nats-Msg-Id: the stream drops the second
// copy within its duplicate window, and the orchestrator runs the event ID
// once after it.
//
// Time is the Batuta-Time header (RFC 3339) if valid, else the stored time.
// Headers other than Nats-* and Batuta-Id/Batuta-Time become
// Message.Headers (first value of each).
func decodeMessage(m jetstream.Msg, meta *jetstream.MsgMetadata) batuta.Message {
	return decodeStored(m.Headers(), m.Data(), meta.Stream, meta.Sequence.Stream, meta.Timestamp)
}

// decodeStored is decodeMessage for the parts of a stored message (also
// read with a stream's GetMsg, see Browse).
func decodeStored(h nats.Header, data []byte, stream string, seq uint64, stored time.Time) batuta.Message {
	var msg batuta.Message
	msg.ID = h.Get(HeaderID)
	if msg.ID == "" {
		msg.ID = h.Get(nats.MsgIdHdr)
	}
	if msg.ID == "" {
		msg.ID = fallbackID(stream, seq, stored)
	}
	if t, err := time.Parse(time.RFC3339Nano, h.Get(HeaderTime)); err == nil {
		msg.Time = t
	} else {
		msg.Time = stored
	}
	if len(data) > 0 {
		msg.Body = data
	}
	for k, vs := range h {
		if len(vs) == 0 || strings.HasPrefix(k, "Nats-") || k == HeaderID || k == HeaderTime {
			continue
		}
		if msg.Headers == nil {
			msg.Headers = make(map[string]string, len(h))
		}
		msg.Headers[k] = vs[0]
	}
	return msg
}

// fallbackID is the ID of a message without Nats-Msg-Id (see decodeMessage).
func fallbackID(stream string, seq uint64, stored time.Time) string {
	return stream + "-" + strconv.FormatUint(seq, 10) + "-" + strconv.FormatInt(stored.UnixNano(), 10)
}
