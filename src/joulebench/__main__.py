"""``python -m joulebench`` runs the CLI (useful where the console script is not installed)."""

from joulebench.cli import main

if __name__ == "__main__":  # not when a sweep's fork server imports the sweep's main module
    main()
