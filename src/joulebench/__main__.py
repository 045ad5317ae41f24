"""``python -m joulebench`` runs the CLI (useful where the console script is not installed)."""

from joulebench.cli import main

main()
