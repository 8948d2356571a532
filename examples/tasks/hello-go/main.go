// A wasmos task in Go: a WASI preview1 command (GOOS=wasip1 GOARCH=wasm).
package main

import (
	"fmt"
	"os"
	"strings"
)

func main() {
	args := os.Args[1:]
	greeting := "hello from Go"
	if len(args) > 0 {
		greeting += ", " + strings.Join(args, " ")
	}
	fmt.Printf("%s!\nargs: %d\n", greeting, len(args))
}
