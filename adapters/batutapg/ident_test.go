package batutapg

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
		{"unicode", "pedidos_año", ""},
		{"dollar quotes", "a$batuta$b", ""},
		{"exactly 63 bytes", strings.Repeat("a", 63), ""},
		{"empty", "", "empty"},
		{"64 bytes", strings.Repeat("a", 64), "over PostgreSQL's limit of 63"},
		{"63 runes but more bytes", strings.Repeat("ñ", 32), "over PostgreSQL's limit"},
		{"NUL", "ord\x00ers", "control character"},
		{"newline", "orders\n", "control character"},
		{"DEL", "orders\x7f", "control character"},
		{"C1 control", "orders\u0085", "control character"},
		{"invalid UTF-8", "orders\xff", "not valid UTF-8"},
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
			require.ErrorContains(t, err, "batutapg: table name")
		})
	}
}

func TestQuoteIdent(t *testing.T) {
	t.Parallel()
	require.Equal(t, `"orders"`, quoteIdent("orders"))
	require.Equal(t, `"orders""; DROP TABLE x; --"`, quoteIdent(`orders"; DROP TABLE x; --`))
	require.Equal(t, `"public"."Orders"`, quoteQualified("public", "Orders"))
	require.Equal(t, `"a.b"."c""d"`, quoteQualified("a.b", `c"d`))
	require.Equal(t, "public.orders", displayName("public", "orders"))
}

func TestQuoteLiteral(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"orders", `'orders'`},
		{"", `''`},
		{`it's`, `'it''s'`},
		{`a\b`, `E'a\\b'`},
		{`x\'; DROP TABLE y; --`, `E'x\\''; DROP TABLE y; --'`},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, quoteLiteral(tt.in), "input %q", tt.in)
	}
}
