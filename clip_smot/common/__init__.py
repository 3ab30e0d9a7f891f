"""Plumbing shared by both tracks: files and run folders, device, torchrun, images, reports."""
