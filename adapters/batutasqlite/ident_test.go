package batutasqlite

import (
	"strings"
	"testing"

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
		{"quotes and brackets", "o'r[d]e`rs", ""},
		{"unicode", "pedidos_año🙂", ""},
		{"exactly 128 bytes", strings.Repeat("a", 128), ""},
		{"empty", "", "empty"},
		{"129 bytes", strings.Repeat("a", 129), "over the limit of 128"},
		{"NUL", "ord\x00ers", "control character"},
		{"newline", "orders\n", "control character"},
		{"DEL", "orders\x7f", "control character"},
		{"invalid UTF-8", "orders\xff", "not valid UTF-8"},
		{"reserved prefix", "sqlite_master", `"sqlite_" prefix`},
		{"reserved prefix any case", "SQLite_x", `"sqlite_" prefix`},
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
			require.ErrorContains(t, err, "batutasqlite: table name")
		})
	}
}

func TestQuoting(t *testing.T) {
	t.Parallel()
	require.Equal(t, `"orders"`, quoteIdent("orders"))
	require.Equal(t, `"orders""; DROP TABLE x; --"`, quoteIdent(`orders"; DROP TABLE x; --`))
	require.Equal(t, `'it''s'`, quoteLiteral("it's"))
	require.Equal(t, `'a\b"c'`, quoteLiteral(`a\b"c`), "no backslash escapes in SQLite")
}

func TestTriggerNameFits(t *testing.T) {
	t.Parallel()
	short := Capture{Table: "orders", Outbox: Outbox{Table: DefaultOutboxTable}}
	require.Regexp(t, `^batuta_orders_insert_[0-9a-f]{8}$`, short.triggerName(OpInsert))
	other := short
	other.Outbox.Table = "other"
	require.NotEqual(t, short.triggerName(OpInsert), other.triggerName(OpInsert))
	long1 := Capture{Table: strings.Repeat("ñ", 62) + "a", Outbox: short.Outbox}
	long2 := Capture{Table: strings.Repeat("ñ", 62) + "b", Outbox: short.Outbox}
	for _, op := range allOps {
		n1 := long1.triggerName(op)
		require.NoError(t, validIdent("trigger", n1))
		require.NotEqual(t, n1, long2.triggerName(op))
	}
}
