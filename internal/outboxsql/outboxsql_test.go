package outboxsql

import (
	"database/sql"
	"errors"
	"strings"
	"testing"

	"github.com/batuta-dev/batuta"
)

// The settings and Capture checks the database adapters share (moved here
// from the copies of their tests; each adapter keeps its own cases and one
// case per check to show it is wired).

func TestPollingValidate(t *testing.T) {
	db := &sql.DB{}
	tests := []struct {
		name  string
		cfg   Polling[struct{}]
		field string
	}{
		{"no DB", Polling[struct{}]{}, "DB"},
		{"batch too large", Polling[struct{}]{DB: db, BatchSize: 10001}, "BatchSize"},
		{"negative batch", Polling[struct{}]{DB: db, BatchSize: -1}, "BatchSize"},
		{"negative min poll", Polling[struct{}]{DB: db, MinPollInterval: -1}, "MinPollInterval"},
		{"max below min", Polling[struct{}]{DB: db, MinPollInterval: 2e9, MaxPollInterval: 1e9}, "MaxPollInterval"},
		{"short lease", Polling[struct{}]{DB: db, Lease: 1e8}, "Lease"},
		{"negative waiting", Polling[struct{}]{DB: db, MaxWaiting: -1}, "MaxWaiting"},
		{"negative backoff", Polling[struct{}]{DB: db, MaxBackoff: -1}, "MaxBackoff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.WithDefaults().Validate()
			var ce *batuta.ConfigError
			if !errors.As(err, &ce) || ce.Field != tt.field || !errors.Is(err, batuta.ErrInvalidConfig) {
				t.Fatalf("Validate() = %v, want a ConfigError on %s", err, tt.field)
			}
		})
	}
	c := Polling[struct{}]{DB: db}.WithDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults refused: %v", err)
	}
	if c.BatchSize != DefaultBatchSize || c.Lease != DefaultLease || c.MaxWaiting != DefaultMaxWaiting ||
		c.MaxBackoff != DefaultMaxBackoff || c.MinPollInterval != DefaultMinPollInterval ||
		c.MaxPollInterval != DefaultMaxPollInterval || c.StaleCheckInterval != DefaultStaleCheckInterval || c.Logger == nil {
		t.Fatalf("defaults not applied: %+v", c)
	}
}

func TestCheckCapture(t *testing.T) {
	ident := func(kind, name string) error { return CheckIdent("pkg", kind, name, 64, "the limit", "") }
	tests := []struct {
		name    string
		ops     []string
		columns []string
		when    string
		field   string // ConfigError field, or "" for an identifier error
	}{
		{"unknown op", []string{"upsert"}, nil, "", "Capture.Ops"},
		{"columns without update", []string{"insert"}, []string{"a"}, "", "Capture.Columns"},
		{"NUL in When", []string{"insert"}, nil, "NEW.a = 1\x00", "Capture.When"},
		{"invalid UTF-8 in When", []string{"insert"}, nil, "NEW.a = '\xff'", "Capture.When"},
		{"hostile column", []string{"update"}, []string{"a\nb"}, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckCapture("pkg", tt.ops, tt.columns, tt.when, ident)
			if tt.field == "" {
				if !errors.Is(err, batuta.ErrInvalidIdentifier) {
					t.Fatalf("CheckCapture() = %v, want an identifier error", err)
				}
				return
			}
			var ce *batuta.ConfigError
			if !errors.As(err, &ce) || ce.Field != tt.field {
				t.Fatalf("CheckCapture() = %v, want a ConfigError on %s", err, tt.field)
			}
		})
	}
	if err := CheckCapture("pkg", []string{"update"}, []string{"a"}, "NEW.a <> OLD.a", ident); err != nil {
		t.Fatalf("valid capture refused: %v", err)
	}
	ops, when := CaptureDefaults([]string(nil), "  x  ")
	if strings.Join(ops, ",") != "insert,update,delete" || when != "x" {
		t.Fatalf("CaptureDefaults = %v, %q", ops, when)
	}
	if got := CanonicalOps([]string{"delete", "insert", "delete"}); strings.Join(got, ",") != "insert,delete" {
		t.Fatalf("CanonicalOps = %v", got)
	}
}

func TestColumnDrift(t *testing.T) {
	was := ColumnsJSON([]Column{{"id", "int"}, {"name", "text"}, {"gone", "int"}})
	tests := []struct {
		name string
		now  []Column
		want string
	}{
		{"same", []Column{{"id", "int"}, {"name", "text"}, {"gone", "int"}}, ""},
		{"changed", []Column{{"id", "bigint"}, {"name", "text"}, {"new", "int"}},
			"column added: new; column dropped: gone; column type changed: id (int -> bigint)"},
		{"reordered", []Column{{"name", "text"}, {"id", "int"}, {"gone", "int"}}, "columns reordered"},
	}
	for _, tt := range tests {
		if got := ColumnDrift(was, tt.now); got != tt.want {
			t.Errorf("%s: ColumnDrift = %q, want %q", tt.name, got, tt.want)
		}
	}
	if got := ColumnDrift("not json", nil); got != "the recorded column list is unreadable" {
		t.Errorf("unreadable record: %q", got)
	}
}
