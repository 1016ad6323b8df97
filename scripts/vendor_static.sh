#!/bin/sh
# Copy the lineage graph's browser libraries from node_modules/ (installed from package-lock.json) into
# static/vendor/, with their licences. The copies are gitignored: `make install` and the Dockerfile
# make them, so the pages never load a script from a CDN. htmx.min.js is committed and left alone.
#
# cytoscape-dagre's browser build bundles its layout engine (@dagrejs/dagre and @dagrejs/graphlib),
# so only two scripts load; those two packages are installed for their licences.
set -eu
cd "$(dirname "$0")/.."
from=node_modules
to=static/vendor
mkdir -p "$to"
cp "$from/cytoscape/dist/cytoscape.min.js" "$to/cytoscape.min.js"
cp "$from/cytoscape/LICENSE" "$to/cytoscape.LICENSE"
cp "$from/cytoscape-dagre/dist/cytoscape-dagre.min.js" "$to/cytoscape-dagre.min.js"
cp "$from/cytoscape-dagre/dist/cytoscape-dagre.min.js.map" "$to/cytoscape-dagre.min.js.map"
cp "$from/cytoscape-dagre/LICENSE" "$to/cytoscape-dagre.LICENSE"
cp "$from/@dagrejs/dagre/LICENSE" "$to/dagre.LICENSE"
cp "$from/@dagrejs/graphlib/LICENSE" "$to/graphlib.LICENSE"
