package batutamysql

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/batuta-dev/batuta"
	"github.com/stretchr/testify/require"
)

func TestValidIdent(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		ident   string
		wantErr string // substring; "" means valid
	}{
		{"plain", "orders", ""},
		{"mixed case and digits", "Orders_2024", ""},
		{"hostile but quotable", `orders"; DROP TABLE x; --`, ""},
		{"backticks and quotes", "o`r'd\\ers", ""},
		{"unicode", "pedidos_año", ""},
		{"exactly 64 characters", strings.Repeat("ñ", 64), ""},
		{"empty", "", "empty"},
		{"65 characters", strings.Repeat("a", 65), "over the limit of 64"},
		{"NUL", "ord\x00ers", "control character"},
		{"newline", "orders\n", "control character"},
		{"DEL", "orders\x7f", "control character"},
		{"C1 control", "orders\u0085", "control character"},
		{"invalid UTF-8", "orders\xff", "not valid UTF-8"},
		{"outside the BMP", "orders🙂", "Basic Multilingual Plane"},
		{"trailing space", "orders ", "ends with a space"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := validIdent("table", tt.ident)
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, batuta.ErrInvalidIdentifier)
			require.ErrorContains(t, err, tt.wantErr)
			require.ErrorContains(t, err, "batutamysql: table name")
		})
	}
}

func TestQuoteIdent(t *testing.T) {
	t.Parallel()
	require.Equal(t, "`orders`", quoteIdent("orders"))
	require.Equal(t, "`or``ders; DROP TABLE x; --`", quoteIdent("or`ders; DROP TABLE x; --"))
	require.Equal(t, "`test`.`a.b`", quoteQualified("test", "a.b"))
}

func TestQuoteLiteral(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"orders", `'orders'`},
		{"", `''`},
		{`orders"; DROP TABLE x; --`, `'orders"; DROP TABLE x; --'`},
		{`it's`, `CONVERT(X'69742773' USING utf8mb4)`},
		{`a\b`, `CONVERT(X'615c62' USING utf8mb4)`},
		{"año", `CONVERT(X'61c3b16f' USING utf8mb4)`},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, quoteLiteral(tt.in), "input %q", tt.in)
	}
}

func TestTriggerNameFits(t *testing.T) {
	t.Parallel()
	ob := Outbox{Schema: "test", Table: "batuta_outbox"}
	short := Capture{Schema: "test", Table: "orders", Outbox: ob}
	require.Regexp(t, `^batuta_orders_insert_[0-9a-f]{8}$`, short.triggerName(OpInsert))
	other := short
	other.Outbox.Table = "other_outbox"
	require.NotEqual(t, short.triggerName(OpInsert), other.triggerName(OpInsert), "two outboxes, two triggers")

	long1 := Capture{Schema: "test", Table: strings.Repeat("ñ", 60) + "a", Outbox: ob}
	long2 := Capture{Schema: "test", Table: strings.Repeat("ñ", 60) + "b", Outbox: ob}
	for _, op := range allOps {
		n1, n2 := long1.triggerName(op), long2.triggerName(op)
		require.LessOrEqual(t, utf8.RuneCountInString(n1), maxIdentLen)
		require.NoError(t, validIdent("trigger", n1))
		require.NotEqual(t, n1, n2, "long names that share a prefix stay apart")
	}
}
