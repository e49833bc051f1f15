// Config parser: see Config.swift
