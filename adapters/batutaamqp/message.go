package batutaamqp

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/batuta-dev/batuta"
	amqp "github.com/rabbitmq/amqp091-go"
)

// Headers the adapter writes. The "x-batuta-" prefix is reserved: Publish
// refuses user headers that use it.
const (
	reservedPrefix = "x-batuta-"
	// headerAttempt carries the attempt number of a message the adapter
	// republished (Nack with a delay, classic queues). The broker's own
	// redelivery count is added on top.
	headerAttempt = "x-batuta-attempt"
	// headerTime carries Message.Time with nanoseconds (the AMQP timestamp
	// property has whole seconds only).
	headerTime = "x-batuta-time"
	// headerDeadReason says why the adapter dead-lettered a message.
	headerDeadReason = "x-batuta-dead-reason"
)

// brokerHeader reports whether the broker added the header (dead-lettering
// history, quorum delivery count): such headers are neither shown in
// Message.Headers nor carried over when the adapter republishes.
func brokerHeader(k string) bool {
	return k == "x-death" || k == "x-delivery-count" ||
		strings.HasPrefix(k, "x-first-death-") || strings.HasPrefix(k, "x-last-death-")
}

// newMessageID returns a random message ID (26 base32 characters, 130 bits).
func newMessageID() string { return rand.Text() }

// checkHeaders refuses header names the adapter reserves or AMQP cannot
// carry.
func checkHeaders(h map[string]string) error {
	for k := range h {
		switch {
		case k == "":
			return fmt.Errorf("batutaamqp: %w: empty header name", batuta.ErrInvalidPayload)
		case len(k) > 255:
			return fmt.Errorf("batutaamqp: %w: header name %.32q... is longer than 255 bytes", batuta.ErrInvalidPayload, k)
		case strings.HasPrefix(k, reservedPrefix):
			return fmt.Errorf("batutaamqp: %w: header %q uses the reserved prefix %q", batuta.ErrInvalidPayload, k, reservedPrefix)
		case brokerHeader(k):
			return fmt.Errorf("batutaamqp: %w: header %q is set by the broker", batuta.ErrInvalidPayload, k)
		}
	}
	return nil
}

// toPublishing encodes a message (ID and Time already set) as a persistent
// AMQP publishing.
func toPublishing(msg batuta.Message, attempt int) amqp.Publishing {
	h := make(amqp.Table, len(msg.Headers)+2)
	for k, v := range msg.Headers {
		h[k] = v
	}
	h[headerTime] = msg.Time.UTC().Format(time.RFC3339Nano)
	if attempt > 1 {
		h[headerAttempt] = int64(attempt)
	}
	return amqp.Publishing{
		Headers:      h,
		DeliveryMode: amqp.Persistent,
		MessageId:    msg.ID,
		Timestamp:    msg.Time,
		Body:         msg.Body,
	}
}

// republishing copies a received message for publishing again (to a wait
// queue, back to the queue, to the dead-letter exchange) as attempt
// attempt. Broker-added headers are dropped: carrying x-death into a wait
// queue would let RabbitMQ's dead-letter cycle detection drop the message.
func republishing(d *amqp.Delivery, attempt int) amqp.Publishing {
	h := make(amqp.Table, len(d.Headers)+1)
	for k, v := range d.Headers {
		if !brokerHeader(k) {
			h[k] = v
		}
	}
	delete(h, headerAttempt)
	if attempt > 1 {
		h[headerAttempt] = int64(attempt)
	}
	return amqp.Publishing{
		Headers:         h,
		ContentType:     d.ContentType,
		ContentEncoding: d.ContentEncoding,
		DeliveryMode:    amqp.Persistent,
		Priority:        d.Priority,
		CorrelationId:   d.CorrelationId,
		ReplyTo:         d.ReplyTo,
		MessageId:       d.MessageId,
		Timestamp:       d.Timestamp,
		Type:            d.Type,
		AppId:           d.AppId,
		Body:            d.Body,
	}
}

// attemptOf computes Delivery.Attempt: the attempt the message was last
// published as (1 unless the adapter republished it), plus the broker's
// count of redeliveries since. Quorum queues count them exactly
// (x-delivery-count); classic queues only flag a redelivery, which counts
// as one.
func attemptOf(d *amqp.Delivery) int {
	base := 1
	if n, ok := intHeader(d.Headers[headerAttempt]); ok && n > 1 {
		base = n
	}
	redeliveries := 0
	if n, ok := intHeader(d.Headers["x-delivery-count"]); ok && n > 0 {
		redeliveries = n
	}
	if d.Redelivered && redeliveries == 0 {
		redeliveries = 1
	}
	return base + redeliveries
}

// intHeader reads an AMQP table integer of any width.
func intHeader(v any) (int, bool) {
	switch n := v.(type) {
	case int8:
		return int(n), true
	case int16:
		return int(n), true
	case int32:
		return int(n), true
	case int64:
		return int(n), true
	case int:
		return n, true
	case uint8:
		return int(n), true
	case uint16:
		return int(n), true
	case uint32:
		return int(n), true
	case uint64:
		return int(n), true
	case string:
		i, err := strconv.Atoi(n)
		return i, err == nil
	}
	return 0, false
}

// noIDHeader as Config.IDHeader consults no header.
const noIDHeader = "-"

// contentIDPrefix starts the IDs that Config.ContentID derives.
const contentIDPrefix = "sha256:"

// stampID gives a received message without a message-id property the ID
// that Config.IDHeader documents (the IDHeader's value, else with
// ContentID the hash of its content, else a random ID) and writes it into
// d.MessageId, where fromDelivery reads it. A copy the adapter republishes
// (to a wait queue on Nack with a delay, back to a classic queue on a
// visibility timeout, to the dead-letter exchange) then carries the same
// ID as its message-id, so only a redelivery by the broker itself can
// change a random ID. It reports whether the ID is random.
func stampID(cfg *Config, d *amqp.Delivery) (random bool) {
	if d.MessageId != "" {
		return false
	}
	if cfg.IDHeader != noIDHeader {
		if id := stringHeader(d.Headers[cfg.IDHeader]); id != "" {
			d.MessageId = id
			return false
		}
	}
	if cfg.ContentID {
		d.MessageId = contentID(d, cfg.ContentIDHeaders)
		return false
	}
	d.MessageId = newMessageID()
	return true
}

// contentID returns "sha256:" and the hex SHA-256 of the body and of the
// headers named in only (nil: every header fromDelivery keeps), each as a
// length-prefixed name and value, in name order. The encoding never
// changes: a message redelivered across an upgrade keeps its ID.
func contentID(d *amqp.Delivery, only []string) string {
	h := sha256.New()
	field := func(b []byte) {
		h.Write(binary.AppendUvarint(nil, uint64(len(b))))
		h.Write(b)
	}
	field(d.Body)
	names := make([]string, 0, len(d.Headers))
	for k, v := range d.Headers {
		if !userHeader(k, v) || (only != nil && !slices.Contains(only, k)) {
			continue
		}
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		field([]byte(k))
		field([]byte(stringHeader(d.Headers[k])))
	}
	return contentIDPrefix + hex.EncodeToString(h.Sum(nil))
}

// userHeader reports whether a header is shown in Message.Headers: a
// string (or byte string) header that neither the adapter nor the broker
// set.
func userHeader(k string, v any) bool {
	if strings.HasPrefix(k, reservedPrefix) || brokerHeader(k) {
		return false
	}
	switch v.(type) {
	case string, []byte:
		return true
	}
	return false
}

// stringHeader returns a string (or byte string) header's value, or "".
func stringHeader(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case []byte:
		return string(v)
	}
	return ""
}

// fromDelivery decodes a received AMQP message (its ID stamped by stampID).
// Headers other than string (or byte string) values, and the adapter's and
// broker's own, are left out of Message.Headers.
func fromDelivery(d *amqp.Delivery) batuta.Message {
	msg := batuta.Message{ID: d.MessageId, Body: d.Body}
	for k, v := range d.Headers {
		if !userHeader(k, v) {
			continue
		}
		if msg.Headers == nil {
			msg.Headers = make(map[string]string, len(d.Headers))
		}
		msg.Headers[k] = stringHeader(v)
	}
	if s, ok := d.Headers[headerTime].(string); ok {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			msg.Time = t
		}
	}
	if msg.Time.IsZero() && !d.Timestamp.IsZero() {
		msg.Time = d.Timestamp
	}
	return msg
}
