package batuta_test

import (
	"testing"

	"github.com/batuta-dev/batuta"
	"github.com/batuta-dev/batuta/batutatest"
)

func TestMemoryStoreConformance(t *testing.T) {
	t.Parallel()
	batutatest.TestStore(t, batutatest.StoreSuite{
		New: func(t *testing.T) batuta.Store { return batuta.NewMemoryStore(batuta.MemoryStoreConfig{}) },
	})
}
