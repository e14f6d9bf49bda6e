#!/usr/bin/env bash
# Builds FerretDB v1.24.2 (MongoDB-wire-compatible, embedded SQLite backend) into $(go env GOPATH)/bin.
#
# Why not plain `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2`: the module proxy we
# reach refuses the module's @v/list (used for the deprecation check), so `go install pkg@version`
# fails, and a build of the module as a dependency panics at start because its build/version/version.txt
# is generated in FerretDB's own repo and absent from the module zip. So we build it from a tiny local
# module that requires v1.24.2 through a `replace` to a copy with version.txt written.
set -euo pipefail
VERSION=${FERRETDB_VERSION:-v1.24.2}
BIN="$(go env GOPATH)/bin"
if [ -x "$BIN/ferretdb" ] && "$BIN/ferretdb" --version 2>/dev/null | grep -q "version: $VERSION"; then
  echo "ferretdb $VERSION already at $BIN/ferretdb"; exit 0
fi
if go install -ldflags=-checklinkname=0 "github.com/FerretDB/FerretDB/cmd/ferretdb@$VERSION" 2>/dev/null \
   && "$BIN/ferretdb" --version >/dev/null 2>&1; then
  echo "ferretdb $VERSION installed with go install"; exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
cat > go.mod <<MOD
module ferretdbbuild

go 1.22

require github.com/FerretDB/FerretDB $VERSION
MOD
printf '//go:build tools\npackage tools\n\nimport _ "github.com/FerretDB/FerretDB/cmd/ferretdb"\n' > tools.go
GOFLAGS=-mod=mod go mod download github.com/FerretDB/FerretDB
src="$(go env GOMODCACHE)/github.com/!ferret!d!b/!ferret!d!b@$VERSION"
cp -r "$src" ./src && chmod -R u+w ./src
echo "$VERSION" > ./src/build/version/version.txt
go mod edit -replace github.com/FerretDB/FerretDB=./src
GOFLAGS=-mod=mod go mod tidy >/dev/null 2>&1
mkdir -p "$BIN"
GOFLAGS=-mod=mod go build -o "$BIN/ferretdb" github.com/FerretDB/FerretDB/cmd/ferretdb
"$BIN/ferretdb" --version | head -1
